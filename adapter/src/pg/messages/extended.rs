//! Extended query protocol: Parse, Bind, Describe, Execute, Sync, Flush, Close and their
//! backend responses (ParseComplete, BindComplete, NoData, ParameterDescription,
//! PortalSuspended, CloseComplete).

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{
    begin_message, empty_message, end_message, put_cstr, put_nullable_bytes, Decode, Encode,
    ProtocolError, Reader,
};

/// Frontend `P`: prepare a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    /// Statement name; empty for the unnamed statement.
    pub name: String,
    pub query: String,
    /// Parameter type OIDs the client specified (0 = unspecified).
    pub param_types: Vec<u32>,
}

impl Encode for Parse {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'P');
        put_cstr(dst, &self.name);
        put_cstr(dst, &self.query);
        dst.put_u16(self.param_types.len() as u16);
        for t in &self.param_types {
            dst.put_u32(*t);
        }
        end_message(dst, at);
    }
}

impl Decode for Parse {
    const TAG: u8 = b'P';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let name = r.cstr("statement name")?.to_string();
        let query = r.cstr("query string")?.to_string();
        let n = r.u16("parameter type count")? as usize;
        let mut param_types = Vec::with_capacity(r.capacity_for(n, 4));
        for _ in 0..n {
            param_types.push(r.u32("parameter type")?);
        }
        r.finish("Parse")?;
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }
}

/// Frontend `B`: bind parameters to a prepared statement, creating a portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    /// Parameter format codes: empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<i16>,
    /// Parameter values; `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    /// Result column format codes, same convention as `param_formats`.
    pub result_formats: Vec<i16>,
}

fn read_formats(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<i16>, ProtocolError> {
    let n = r.u16(what)? as usize;
    let mut v = Vec::with_capacity(r.capacity_for(n, 2));
    for _ in 0..n {
        v.push(r.i16(what)?);
    }
    Ok(v)
}

fn put_formats(dst: &mut BytesMut, formats: &[i16]) {
    dst.put_u16(formats.len() as u16);
    for f in formats {
        dst.put_i16(*f);
    }
}

impl Encode for Bind {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'B');
        put_cstr(dst, &self.portal);
        put_cstr(dst, &self.statement);
        put_formats(dst, &self.param_formats);
        dst.put_u16(self.params.len() as u16);
        for p in &self.params {
            put_nullable_bytes(dst, p.as_deref());
        }
        put_formats(dst, &self.result_formats);
        end_message(dst, at);
    }
}

impl Decode for Bind {
    const TAG: u8 = b'B';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let portal = r.cstr("portal name")?.to_string();
        let statement = r.cstr("statement name")?.to_string();
        let param_formats = read_formats(&mut r, "parameter format")?;
        let n = r.u16("parameter count")? as usize;
        let mut params = Vec::with_capacity(r.capacity_for(n, 4));
        for _ in 0..n {
            params.push(
                r.nullable_bytes("parameter value")?
                    .map(Bytes::copy_from_slice),
            );
        }
        let result_formats = read_formats(&mut r, "result format")?;
        r.finish("Bind")?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }
}

/// What a Describe or Close refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `S`: a prepared statement.
    Statement,
    /// `P`: a portal.
    Portal,
}

impl Target {
    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }

    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            _ => Err(ProtocolError::Invalid("describe/close target")),
        }
    }
}

fn decode_target_name(body: &[u8], what: &'static str) -> Result<(Target, String), ProtocolError> {
    let mut r = Reader::new(body);
    let target = Target::from_byte(r.u8(what)?)?;
    let name = r.cstr(what)?.to_string();
    r.finish(what)?;
    Ok((target, name))
}

/// Frontend `D`: describe a statement or portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    pub target: Target,
    pub name: String,
}

impl Encode for Describe {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'D');
        dst.put_u8(self.target.byte());
        put_cstr(dst, &self.name);
        end_message(dst, at);
    }
}

impl Decode for Describe {
    const TAG: u8 = b'D';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let (target, name) = decode_target_name(body, "Describe")?;
        Ok(Describe { target, name })
    }
}

/// Frontend `C`: close a statement or portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub target: Target,
    pub name: String,
}

impl Encode for Close {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'C');
        dst.put_u8(self.target.byte());
        put_cstr(dst, &self.name);
        end_message(dst, at);
    }
}

impl Decode for Close {
    const TAG: u8 = b'C';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let (target, name) = decode_target_name(body, "Close")?;
        Ok(Close { target, name })
    }
}

/// Frontend `E`: execute a portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub portal: String,
    /// Maximum rows to return; 0 = no limit.
    pub max_rows: i32,
}

impl Encode for Execute {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b'E');
        put_cstr(dst, &self.portal);
        dst.put_i32(self.max_rows);
        end_message(dst, at);
    }
}

impl Decode for Execute {
    const TAG: u8 = b'E';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let portal = r.cstr("portal name")?.to_string();
        let max_rows = r.i32("max rows")?;
        r.finish("Execute")?;
        Ok(Execute { portal, max_rows })
    }
}

empty_message!(
    /// Frontend `S`: end of an extended-protocol batch; the server answers ReadyForQuery.
    Sync,
    b'S'
);
empty_message!(
    /// Frontend `H`: ask the server to flush pending output.
    Flush,
    b'H'
);
empty_message!(
    /// Backend `1`.
    ParseComplete,
    b'1'
);
empty_message!(
    /// Backend `2`.
    BindComplete,
    b'2'
);
empty_message!(
    /// Backend `3`.
    CloseComplete,
    b'3'
);
empty_message!(
    /// Backend `n`: the statement/portal returns no rows.
    NoData,
    b'n'
);
empty_message!(
    /// Backend `s`: Execute's row limit was reached.
    PortalSuspended,
    b's'
);

/// Backend `t`: parameter types of a prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterDescription {
    pub types: Vec<u32>,
}

impl Encode for ParameterDescription {
    fn encode(&self, dst: &mut BytesMut) {
        let at = begin_message(dst, b't');
        dst.put_u16(self.types.len() as u16);
        for t in &self.types {
            dst.put_u32(*t);
        }
        end_message(dst, at);
    }
}

impl Decode for ParameterDescription {
    const TAG: u8 = b't';

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let n = r.u16("parameter count")? as usize;
        let mut types = Vec::with_capacity(r.capacity_for(n, 4));
        for _ in 0..n {
            types.push(r.u32("parameter type")?);
        }
        r.finish("ParameterDescription")?;
        Ok(ParameterDescription { types })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_util::round_trip;

    #[test]
    fn frontend_round_trips() {
        round_trip(&Parse {
            name: "s1".into(),
            query: "SELECT $1::int4, $2".into(),
            param_types: vec![23, 0],
        });
        round_trip(&Parse {
            name: String::new(),
            query: "SELECT 1".into(),
            param_types: vec![],
        });
        round_trip(&Bind {
            portal: String::new(),
            statement: "s1".into(),
            param_formats: vec![1],
            params: vec![
                Some(Bytes::from_static(&[0, 0, 0, 7])),
                None,
                Some(Bytes::new()),
            ],
            result_formats: vec![0, 1],
        });
        round_trip(&Describe {
            target: Target::Statement,
            name: "s1".into(),
        });
        round_trip(&Describe {
            target: Target::Portal,
            name: String::new(),
        });
        round_trip(&Execute {
            portal: "p".into(),
            max_rows: 100,
        });
        round_trip(&Close {
            target: Target::Portal,
            name: "p".into(),
        });
        round_trip(&Sync);
        round_trip(&Flush);
    }

    #[test]
    fn backend_round_trips() {
        round_trip(&ParseComplete);
        round_trip(&BindComplete);
        round_trip(&CloseComplete);
        round_trip(&NoData);
        round_trip(&PortalSuspended);
        round_trip(&ParameterDescription {
            types: vec![23, 25, 1700],
        });
        round_trip(&ParameterDescription { types: vec![] });
    }

    #[test]
    fn hostile_counts_do_not_allocate_or_panic() {
        // Bind claiming 65535 parameters with no bytes behind it.
        let body = b"\0\0\0\0\xff\xff";
        assert!(Bind::decode_body(body).is_err());
        // Negative parameter length other than -1.
        let body = b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0";
        assert!(Bind::decode_body(body).is_err());
        assert!(Describe::decode_body(b"Xname\0").is_err());
    }
}
