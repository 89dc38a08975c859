//! Framing: a MySQL packet is a 3-byte little-endian payload length, a 1-byte sequence id and
//! the payload. A payload of 0xFFFFFF bytes or more is split into several packets: every full
//! (0xFFFFFF-byte) packet is continued by the next one, and the last one is shorter (possibly
//! empty). An incomplete packet is the normal state of a stream buffer and yields `None`.
//!
//! The relay moves [`RawPacket`]s (header included) without copying their payload apart;
//! [`Assembler`] joins the packets of one logical payload where Larder must read all of it
//! (client commands), bounded by a maximum size.

use bytes::{BufMut, Bytes, BytesMut};

use super::messages::MyProtocolError;

/// Bytes of the packet header.
pub const HEADER_LEN: usize = 4;
/// The largest payload of one packet; a packet this long is continued by the next.
pub const PAYLOAD_MAX_PER_PACKET: usize = 0xFF_FFFF;
/// Default bound on one logical payload accepted from a client (64 MiB, MySQL's default
/// `max_allowed_packet`).
pub const MAX_PACKET_BYTES_DEFAULT: usize = 64 << 20;

/// The header of the packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Payload length.
    pub len: usize,
    pub seq: u8,
}

impl PacketHeader {
    /// Reads the header; `None` with fewer than 4 bytes buffered.
    pub fn peek(buf: &[u8]) -> Option<PacketHeader> {
        let h = buf.get(..HEADER_LEN)?;
        Some(PacketHeader {
            len: u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize,
            seq: h[3],
        })
    }

    /// Whether the next packet continues this one's payload.
    pub fn is_continued(&self) -> bool {
        self.len == PAYLOAD_MAX_PER_PACKET
    }
}

/// One physical packet, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    bytes: Bytes,
}

impl RawPacket {
    /// Splits the first complete packet off `buf`; `None` means "need more bytes".
    pub fn parse(buf: &mut BytesMut) -> Option<RawPacket> {
        let h = PacketHeader::peek(buf)?;
        if buf.len() < HEADER_LEN + h.len {
            return None;
        }
        Some(RawPacket {
            bytes: buf.split_to(HEADER_LEN + h.len).freeze(),
        })
    }

    /// A packet with `payload` (at most [`PAYLOAD_MAX_PER_PACKET`] bytes).
    pub fn new(seq: u8, payload: &[u8]) -> RawPacket {
        assert!(payload.len() <= PAYLOAD_MAX_PER_PACKET, "payload too long");
        let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
        b.put_slice(&(payload.len() as u32).to_le_bytes()[..3]);
        b.put_u8(seq);
        b.put_slice(payload);
        RawPacket { bytes: b.freeze() }
    }

    pub fn seq(&self) -> u8 {
        self.bytes[3]
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// Header and payload, as on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the next packet continues this one's payload.
    pub fn is_continued(&self) -> bool {
        self.payload().len() == PAYLOAD_MAX_PER_PACKET
    }

    /// This packet with another sequence id.
    pub fn with_seq(self, seq: u8) -> RawPacket {
        if seq == self.seq() {
            return self;
        }
        let mut b = BytesMut::from(&self.bytes[..]);
        b[3] = seq;
        RawPacket { bytes: b.freeze() }
    }
}

/// Writes `payload` as packets numbered from `first_seq`, splitting at
/// [`PAYLOAD_MAX_PER_PACKET`] (a payload that is an exact multiple of it ends with an empty
/// packet). Returns the sequence id after the last packet.
pub fn write_packets(dst: &mut BytesMut, first_seq: u8, payload: &[u8]) -> u8 {
    let mut seq = first_seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(PAYLOAD_MAX_PER_PACKET);
        dst.reserve(HEADER_LEN + n);
        dst.put_slice(&(n as u32).to_le_bytes()[..3]);
        dst.put_u8(seq);
        dst.put_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < PAYLOAD_MAX_PER_PACKET {
            return seq;
        }
    }
}

/// A whole logical payload and the packets it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logical {
    pub first_seq: u8,
    /// How many physical packets carried it.
    pub packets: usize,
    pub payload: BytesMut,
}

impl Logical {
    /// The sequence id after this payload's last packet.
    pub fn next_seq(&self) -> u8 {
        self.first_seq.wrapping_add(self.packets as u8)
    }
}

/// Joins the packets of one logical payload, bounded by `max` bytes.
#[derive(Debug)]
pub struct Assembler {
    max: usize,
    current: Option<Logical>,
}

impl Assembler {
    pub fn new(max: usize) -> Self {
        Assembler { max, current: None }
    }

    /// Payload bytes gathered so far for the payload being assembled.
    pub fn pending_len(&self) -> usize {
        self.current.as_ref().map_or(0, |c| c.payload.len())
    }

    /// Checks a packet header before its body is buffered, so a hostile length is refused
    /// without reading it.
    pub fn check(&self, h: &PacketHeader) -> Result<(), MyProtocolError> {
        let len = self.pending_len().saturating_add(h.len);
        if len > self.max {
            return Err(MyProtocolError::TooLarge { len, max: self.max });
        }
        if let Some(c) = &self.current {
            let expected = c.next_seq();
            if h.seq != expected {
                return Err(MyProtocolError::OutOfOrder {
                    got: h.seq,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Adds a packet; returns the logical payload once its last packet arrived.
    pub fn push(&mut self, p: &RawPacket) -> Result<Option<Logical>, MyProtocolError> {
        let h = PacketHeader {
            len: p.payload().len(),
            seq: p.seq(),
        };
        self.check(&h)?;
        let cur = self.current.get_or_insert_with(|| Logical {
            first_seq: h.seq,
            packets: 0,
            payload: BytesMut::new(),
        });
        cur.packets += 1;
        cur.payload.extend_from_slice(p.payload());
        if p.is_continued() {
            return Ok(None);
        }
        Ok(self.current.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(wire: &mut BytesMut, max: usize) -> Result<Logical, MyProtocolError> {
        let mut a = Assembler::new(max);
        loop {
            let p = RawPacket::parse(wire).expect("complete packet");
            if let Some(l) = a.push(&p)? {
                return Ok(l);
            }
        }
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let mut b = BytesMut::from(&[5u8, 0, 0, 0, b'a'][..]);
        assert_eq!(RawPacket::parse(&mut b), None);
        assert_eq!(b.len(), 5);
        b.put_slice(b"bcde");
        let p = RawPacket::parse(&mut b).unwrap();
        assert_eq!((p.seq(), p.payload()), (0, &b"abcde"[..]));
        assert!(b.is_empty());
        assert_eq!(RawPacket::parse(&mut BytesMut::from(&[1u8, 0][..])), None);
    }

    #[test]
    fn large_payloads_split_and_reassemble() {
        for len in [
            0,
            1,
            PAYLOAD_MAX_PER_PACKET - 1,
            PAYLOAD_MAX_PER_PACKET,
            PAYLOAD_MAX_PER_PACKET + 7,
            2 * PAYLOAD_MAX_PER_PACKET,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = BytesMut::new();
            let next = write_packets(&mut wire, 0, &payload);
            let packets = len / PAYLOAD_MAX_PER_PACKET + 1;
            assert_eq!(next as usize, packets);
            assert_eq!(wire.len(), payload.len() + HEADER_LEN * packets);
            let l = assemble(&mut wire, usize::MAX).unwrap();
            assert_eq!(l.packets, packets);
            assert_eq!(l.next_seq(), next);
            assert_eq!(&l.payload[..], &payload[..]);
        }
    }

    #[test]
    fn bounds_and_order_are_checked() {
        let payload = vec![1u8; PAYLOAD_MAX_PER_PACKET + 10];
        let mut wire = BytesMut::new();
        write_packets(&mut wire, 0, &payload);
        assert!(matches!(
            assemble(&mut wire.clone(), PAYLOAD_MAX_PER_PACKET),
            Err(MyProtocolError::TooLarge { .. })
        ));
        // A continuation with the wrong sequence id.
        wire[HEADER_LEN + PAYLOAD_MAX_PER_PACKET + 3] = 9;
        assert!(matches!(
            assemble(&mut wire, usize::MAX),
            Err(MyProtocolError::OutOfOrder {
                got: 9,
                expected: 1
            })
        ));
        let a = Assembler::new(100);
        assert!(a.check(&PacketHeader { len: 101, seq: 0 }).is_err());
    }

    #[test]
    fn reseq() {
        let p = RawPacket::new(1, b"xyz");
        let q = p.clone().with_seq(4);
        assert_eq!((q.seq(), q.payload()), (4, &b"xyz"[..]));
        assert_eq!(p.with_seq(1).seq(), 1);
    }
}
