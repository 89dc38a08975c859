//! Client commands: the first byte of every packet a client sends after authentication.

use bytes::{BufMut, BytesMut};

use super::codec::{MyProtocolError, Payload, Reader};

/// A command, by its first byte. Only the bytes the relay treats specially have a variant;
/// everything else is [`Command::Other`] and relayed by the generic response rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Sleep,
    Quit,
    InitDb,
    Query,
    FieldList,
    Statistics,
    ProcessInfo,
    ProcessKill,
    Debug,
    Ping,
    ChangeUser,
    BinlogDump,
    RegisterSlave,
    StmtPrepare,
    StmtExecute,
    StmtSendLongData,
    StmtClose,
    StmtReset,
    SetOption,
    StmtFetch,
    BinlogDumpGtid,
    ResetConnection,
    /// MariaDB's COM_STMT_BULK_EXECUTE.
    StmtBulkExecute,
    Other(u8),
}

impl Command {
    pub fn from_byte(b: u8) -> Command {
        match b {
            0x00 => Command::Sleep,
            0x01 => Command::Quit,
            0x02 => Command::InitDb,
            0x03 => Command::Query,
            0x04 => Command::FieldList,
            0x09 => Command::Statistics,
            0x0A => Command::ProcessInfo,
            0x0C => Command::ProcessKill,
            0x0D => Command::Debug,
            0x0E => Command::Ping,
            0x11 => Command::ChangeUser,
            0x12 => Command::BinlogDump,
            0x15 => Command::RegisterSlave,
            0x16 => Command::StmtPrepare,
            0x17 => Command::StmtExecute,
            0x18 => Command::StmtSendLongData,
            0x19 => Command::StmtClose,
            0x1A => Command::StmtReset,
            0x1B => Command::SetOption,
            0x1C => Command::StmtFetch,
            0x1E => Command::BinlogDumpGtid,
            0x1F => Command::ResetConnection,
            0xFA => Command::StmtBulkExecute,
            other => Command::Other(other),
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            Command::Sleep => 0x00,
            Command::Quit => 0x01,
            Command::InitDb => 0x02,
            Command::Query => 0x03,
            Command::FieldList => 0x04,
            Command::Statistics => 0x09,
            Command::ProcessInfo => 0x0A,
            Command::ProcessKill => 0x0C,
            Command::Debug => 0x0D,
            Command::Ping => 0x0E,
            Command::ChangeUser => 0x11,
            Command::BinlogDump => 0x12,
            Command::RegisterSlave => 0x15,
            Command::StmtPrepare => 0x16,
            Command::StmtExecute => 0x17,
            Command::StmtSendLongData => 0x18,
            Command::StmtClose => 0x19,
            Command::StmtReset => 0x1A,
            Command::SetOption => 0x1B,
            Command::StmtFetch => 0x1C,
            Command::BinlogDumpGtid => 0x1E,
            Command::ResetConnection => 0x1F,
            Command::StmtBulkExecute => 0xFA,
            Command::Other(b) => b,
        }
    }

    /// The command of a command packet's payload (`None` for an empty payload).
    pub fn of(payload: &[u8]) -> Option<Command> {
        payload.first().map(|b| Command::from_byte(*b))
    }
}

/// `COM_QUERY`: the statement text (Larder never negotiates query attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComQuery {
    pub sql: Vec<u8>,
}

impl Payload for ComQuery {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(Command::Query.as_byte());
        dst.put_slice(&self.sql);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let c = r.u8("command")?;
        if c != Command::Query.as_byte() {
            return Err(MyProtocolError::UnexpectedHeader(c));
        }
        Ok(ComQuery {
            sql: r.rest().to_vec(),
        })
    }
}

/// `COM_PROCESS_KILL`: the thread id to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComProcessKill {
    pub id: u32,
}

impl Payload for ComProcessKill {
    fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(Command::ProcessKill.as_byte());
        dst.put_u32_le(self.id);
    }

    fn decode(payload: &[u8]) -> Result<Self, MyProtocolError> {
        let mut r = Reader::new(payload);
        let c = r.u8("command")?;
        if c != Command::ProcessKill.as_byte() {
            return Err(MyProtocolError::UnexpectedHeader(c));
        }
        let id = r.u32("thread id")?;
        r.finish("COM_PROCESS_KILL")?;
        Ok(ComProcessKill { id })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::round_trip;
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(Command::from_byte(b).as_byte(), b);
        }
        assert_eq!(Command::of(&[0x03, b'x']), Some(Command::Query));
        assert_eq!(Command::of(&[]), None);
    }

    #[test]
    fn payloads_round_trip() {
        round_trip(&ComQuery {
            sql: b"SELECT 1".to_vec(),
        });
        round_trip(&ComQuery { sql: Vec::new() });
        round_trip(&ComProcessKill { id: 0xDEAD_BEEF });
        assert!(ComQuery::decode(&[0x16, b'x']).is_err());
    }
}
