//! Postgres WAL positions.

use std::fmt;
use std::str::FromStr;

/// A Postgres log sequence number: a byte position in the WAL. Printed as `X/Y` (high and low
/// 32 bits in hex), as Postgres prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN '{s}': expected X/Y"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|e| format!("invalid LSN '{s}': {e}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|e| format!("invalid LSN '{s}': {e}"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Lsn {
        Lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let l = Lsn(0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(l));
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn::ZERO));
        assert!("nonsense".parse::<Lsn>().is_err());
        assert!("1/FFFFFFFFF".parse::<Lsn>().is_err());
    }
}
