//! Starts a throwaway Postgres (and, with `--mariadb`, MariaDB) server, prints its URL(s), and
//! keeps it running until stdin closes or a line is entered. Handy for poking at the harness
//! servers by hand: `cargo run -p larder-testkit --example throwaway_servers`.

use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let pg = larder_testkit::PgServer::start()?;
    println!("postgres {}", pg.url("postgres"));
    let my = if std::env::args().any(|a| a == "--mariadb") {
        let my = larder_testkit::MariaDbServer::start()?;
        println!("mariadb {}", my.url(""));
        Some(my)
    } else {
        None
    };
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(my);
    drop(pg);
    Ok(())
}
