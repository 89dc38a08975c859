//! Capability flags, server status flags and a few protocol constants.

/// Capability flags (the `CLIENT_*` constants), lower and upper 32 bits as MariaDB extends them.
pub mod capability {
    /// MySQL: long passwords; MariaDB servers clear it to say "I am MariaDB".
    pub const CLIENT_MYSQL: u32 = 1;
    pub const CLIENT_FOUND_ROWS: u32 = 1 << 1;
    pub const CLIENT_LONG_FLAG: u32 = 1 << 2;
    pub const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
    pub const CLIENT_COMPRESS: u32 = 1 << 5;
    pub const CLIENT_LOCAL_FILES: u32 = 1 << 7;
    pub const CLIENT_PROTOCOL_41: u32 = 1 << 9;
    pub const CLIENT_SSL: u32 = 1 << 11;
    pub const CLIENT_TRANSACTIONS: u32 = 1 << 13;
    pub const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
    pub const CLIENT_MULTI_STATEMENTS: u32 = 1 << 16;
    pub const CLIENT_MULTI_RESULTS: u32 = 1 << 17;
    pub const CLIENT_PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const CLIENT_PLUGIN_AUTH: u32 = 1 << 19;
    pub const CLIENT_CONNECT_ATTRS: u32 = 1 << 20;
    pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CLIENT_SESSION_TRACK: u32 = 1 << 23;
    pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
    /// MySQL 8: result sets may omit column metadata.
    pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// MySQL 8.0.18: zstd compression.
    pub const CLIENT_ZSTD_COMPRESSION: u32 = 1 << 26;
    /// MySQL 8.0.23: attributes before the query text of COM_QUERY.
    pub const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;

    /// Flags Larder never lets a client and the upstream negotiate: they change the framing
    /// or the shape of responses in ways the relay does not follow.
    pub const UNSUPPORTED: u32 = CLIENT_COMPRESS
        | CLIENT_OPTIONAL_RESULTSET_METADATA
        | CLIENT_ZSTD_COMPRESSION
        | CLIENT_QUERY_ATTRIBUTES;

    /// MariaDB extended capabilities (upper 32 bits, carried in reserved bytes).
    pub const MARIADB_CLIENT_PROGRESS: u32 = 1;
    pub const MARIADB_CLIENT_COM_MULTI: u32 = 1 << 1;
    pub const MARIADB_CLIENT_STMT_BULK_OPERATIONS: u32 = 1 << 2;
    pub const MARIADB_CLIENT_EXTENDED_METADATA: u32 = 1 << 3;
    pub const MARIADB_CLIENT_CACHE_METADATA: u32 = 1 << 4;
    /// The MariaDB extended capabilities the relay passes on (extended metadata only adds
    /// fields inside column definitions, which the relay does not decode).
    pub const MARIADB_SUPPORTED: u32 = MARIADB_CLIENT_EXTENDED_METADATA;
}

/// Server status flags (in OK and EOF packets).
pub mod status {
    pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
    pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
    pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
    pub const SERVER_STATUS_LAST_ROW_SENT: u16 = 0x0080;
}

/// First bytes of response packets.
pub mod header {
    pub const OK: u8 = 0x00;
    pub const AUTH_MORE_DATA: u8 = 0x01;
    pub const LOCAL_INFILE: u8 = 0xFB;
    /// EOF, an OK that ends a result set (CLIENT_DEPRECATE_EOF), or an auth switch request.
    pub const EOF: u8 = 0xFE;
    pub const ERR: u8 = 0xFF;
}

/// The server error codes Larder itself sends.
pub mod error_code {
    /// ER_CON_COUNT_ERROR
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// ER_HANDSHAKE_ERROR
    pub const HANDSHAKE_ERROR: u16 = 1043;
    /// ER_SERVER_SHUTDOWN
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// ER_UNKNOWN_ERROR
    pub const UNKNOWN_ERROR: u16 = 1105;
    /// ER_NET_PACKET_TOO_LARGE
    pub const NET_PACKET_TOO_LARGE: u16 = 1153;
    /// ER_NET_PACKETS_OUT_OF_ORDER
    pub const NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
    /// ER_NET_READ_INTERRUPTED (a read timed out)
    pub const NET_READ_INTERRUPTED: u16 = 1159;
    /// ER_NOT_SUPPORTED_YET
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    /// CR_SERVER_LOST (a client-library code, used for a lost upstream)
    pub const SERVER_LOST: u16 = 2013;
}
