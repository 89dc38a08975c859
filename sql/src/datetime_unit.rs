//! Field and unit names of `date_trunc`, `extract` and `date_part`, as Postgres spells them
//! (its `DecodeUnits` table, checked against Postgres 15). Shared by lowering (which refuses
//! unknown units) and evaluation.

/// Units of `date_trunc`, `extract` and `date_part` (Postgres' `DecodeUnits` spellings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Microseconds,
    Milliseconds,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
    Decade,
    Century,
    Millennium,
    Epoch,
    Dow,
    IsoDow,
    Doy,
    IsoYear,
}

/// The unit a (case-insensitive) unit name denotes, as Postgres spells them. `julian` and the
/// time zone fields are not supported.
pub fn unit(name: &str) -> Option<Unit> {
    use Unit as U;
    Some(match name.to_ascii_lowercase().as_str() {
        "microseconds" | "microsecond" | "us" | "usec" | "usecs" => U::Microseconds,
        "milliseconds" | "millisecond" | "ms" | "msec" => U::Milliseconds,
        "second" | "seconds" | "sec" | "secs" | "s" => U::Second,
        "minute" | "minutes" | "min" | "mins" | "m" => U::Minute,
        "hour" | "hours" | "h" | "hr" | "hrs" => U::Hour,
        "day" | "days" | "d" => U::Day,
        "week" | "weeks" | "w" => U::Week,
        "month" | "months" | "mon" | "mons" => U::Month,
        "quarter" | "qtr" => U::Quarter,
        "year" | "years" | "y" | "yr" | "yrs" => U::Year,
        "decade" | "decades" | "dec" => U::Decade,
        "century" | "centuries" | "c" | "cent" => U::Century,
        "millennium" | "millennia" | "millenniums" | "mil" | "mils" => U::Millennium,
        "epoch" => U::Epoch,
        "dow" => U::Dow,
        "isodow" => U::IsoDow,
        "doy" => U::Doy,
        "isoyear" => U::IsoYear,
        _ => return None,
    })
}

/// Whether `date_trunc` accepts the unit.
pub fn truncatable(u: Unit) -> bool {
    !matches!(
        u,
        Unit::Epoch | Unit::Dow | Unit::IsoDow | Unit::Doy | Unit::IsoYear
    )
}

/// Whether `extract(... FROM date)` accepts the unit (time-of-day units are errors there).
pub fn date_field(u: Unit) -> bool {
    !matches!(
        u,
        Unit::Microseconds | Unit::Milliseconds | Unit::Second | Unit::Minute | Unit::Hour
    )
}
