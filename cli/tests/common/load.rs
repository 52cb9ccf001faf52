//! A write load on the published instance that records which commits were acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Ids whose commit was acknowledged, and how many writes were refused.
pub struct Writer {
    pub acknowledged: Vec<i64>,
    pub errors: usize,
}

/// Inserts rows into `commits(id)` over `conninfo` as fast as it can until `stop`, with ids
/// `first_id + 2`, `first_id + 4`, ... (two writers: first ids 0 and 1); reconnects when the
/// server goes away.
pub async fn write_until(conninfo: String, stop: Arc<AtomicBool>, first_id: i64) -> Writer {
    let mut w = Writer {
        acknowledged: Vec::new(),
        errors: 0,
    };
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        let client = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(_) => {
                w.errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            id += 2;
            match client
                .execute("INSERT INTO commits(id) VALUES ($1)", &[&id])
                .await
            {
                Ok(_) => w.acknowledged.push(id),
                Err(_) => {
                    w.errors += 1;
                    if client.is_closed() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    w
}

/// Two [`write_until`] writers on `conninfo` (ids even and odd), running on `rt`.
pub fn start_writers(
    rt: &tokio::runtime::Runtime,
    conninfo: String,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Writer>> {
    (0..2)
        .map(|n| rt.spawn(write_until(conninfo.clone(), stop.clone(), n)))
        .collect()
}
