//! HTTP on this machine for the tests: a bare GET, waiting for an endpoint to answer, and
//! reading a Prometheus `/metrics` exposition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// GET `path` from an HTTP endpoint on this machine: (status code, body).
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, response.clone());
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok((status, body.to_owned()))
}

/// Waits until GET `path` answers 200 (a process starting up); panics after `timeout`.
pub async fn wait_http_ok(address: SocketAddr, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http_get(address, path).await;
        if matches!(answer, Ok((200, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET http://{address}{path} did not answer 200 within {timeout:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Metric family name to its `# TYPE`.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the Prometheus text format (version 0.0.4); an error names the bad line.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut exposition = Exposition::default();
        for (number, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next())
                    else {
                        return Err(bad("a TYPE line needs a name and a type"));
                    };
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(bad("unknown type"));
                    }
                    exposition.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            let name_end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(line.len());
            let name = &line[..name_end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(bad("no metric name"));
            }
            let mut rest = &line[name_end..];
            let mut labels = BTreeMap::new();
            if let Some(after) = rest.strip_prefix('{') {
                rest = after;
                loop {
                    rest = rest.trim_start();
                    if let Some(after) = rest.strip_prefix('}') {
                        rest = after;
                        break;
                    }
                    let (label, after) =
                        rest.split_once('=').ok_or_else(|| bad("label without ="))?;
                    let label = label.trim();
                    if label.is_empty()
                        || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(bad("bad label name"));
                    }
                    let mut chars = after
                        .strip_prefix('"')
                        .ok_or_else(|| bad("unquoted label value"))?
                        .char_indices();
                    let mut value = String::new();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => value.push(c),
                                _ => return Err(bad("bad escape in a label value")),
                            },
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => return Err(bad("unterminated label value")),
                        }
                    };
                    labels.insert(label.to_owned(), value);
                    rest = after[1 + end + 1..].trim_start();
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let mut fields = rest.split_whitespace();
            let value = match fields.next() {
                Some("+Inf") => f64::INFINITY,
                Some("-Inf") => f64::NEG_INFINITY,
                Some(v) => v.parse().map_err(|_| bad("bad value"))?,
                None => return Err(bad("no value")),
            };
            if let Some(timestamp) = fields.next() {
                timestamp.parse::<i64>().map_err(|_| bad("bad timestamp"))?;
            }
            if fields.next().is_some() {
                return Err(bad("trailing text"));
            }
            exposition.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(exposition)
    }

    /// The samples of `name` that have all of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples of `name` that have all of `labels`; 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }
}

/// Reads and parses `/metrics` at `address`; panics when it does not answer 200 with a
/// well-formed exposition.
pub async fn scrape(address: SocketAddr) -> Exposition {
    let (status, body) = http_get(address, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("GET http://{address}/metrics: {e}"));
    assert_eq!(status, 200, "GET http://{address}/metrics: {body}");
    Exposition::parse(&body).unwrap_or_else(|e| panic!("http://{address}/metrics: {e}\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expositions_are_parsed_with_labels_escapes_and_special_values() {
        let text = "# HELP a_total Things\n# TYPE a_total counter\n\
                    a_total{mount=\"db/x\",cache=\"memory\"} 3\n\
                    a_total{mount=\"db/y\", cache=\"q\\\"\\\\\\n\",} 4 1700000000000\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nup +Inf\n";
        let parsed = Exposition::parse(text).unwrap();
        assert_eq!(parsed.types["a_total"], "counter");
        assert_eq!(parsed.types["h"], "histogram");
        assert_eq!(parsed.sum("a_total", &[]), 7.0);
        assert_eq!(parsed.sum("a_total", &[("mount", "db/x")]), 3.0);
        assert_eq!(parsed.sum("a_total", &[("cache", "q\"\\\n")]), 4.0);
        assert_eq!(parsed.sum("h_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(parsed.sum("missing", &[]), 0.0);
        assert!(parsed.find("up", &[]).all(|s| s.value.is_infinite()));
        for bad in [
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x 1 2 3",
            "x",
            "x abc",
            "{a=\"1\"} 2",
            "# TYPE x nonsense",
        ] {
            assert!(Exposition::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
