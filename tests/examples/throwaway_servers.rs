//! Starts a throwaway Postgres (and, with `--mariadb`, MariaDB; with `--mariadb-only`, only
//! MariaDB) server, prints its URL(s), and keeps it running until stdin closes or a line is
//! entered. Handy for poking at the harness servers by hand, and used by `benches/mysql`:
//! `cargo run -p larder-testkit --example throwaway_servers -- --mariadb`.

use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let only_mariadb = std::env::args().any(|a| a == "--mariadb-only");
    let pg = if only_mariadb {
        None
    } else {
        let pg = larder_testkit::PgServer::start()?;
        println!("postgres {}", pg.url("postgres"));
        Some(pg)
    };
    let my = if only_mariadb || std::env::args().any(|a| a == "--mariadb") {
        let my = larder_testkit::MariaDbServer::start()?;
        println!("mariadb {}", my.url(""));
        if let Some(pid) = my.pid() {
            println!("mariadb-pid {pid}");
        }
        Some(my)
    } else {
        None
    };
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(my);
    drop(pg);
    Ok(())
}
