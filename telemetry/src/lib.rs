//! Telemetry shared by the node agent and the operator: the HTTP endpoint of their metrics and
//! health (`/metrics`, `/healthz`, `/readyz`) and a lock-free latency histogram for hot paths.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::MetricEncoder;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency buckets, in seconds: 10 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// A histogram of durations over [`LATENCY_BUCKETS`] that records with a few relaxed atomic
/// additions, no lock: cheap enough for every FUSE request.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative), the last one for what exceeds every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram as `encoder`'s sample.
    pub fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        // Per bucket: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum,
            counts.iter().sum(),
            &buckets,
            None,
        )
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// What the endpoint serves.
pub struct Endpoint {
    pub registry: Registry,
    /// Answers `/readyz`.
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Binds `address` now, so that a taken port fails the start, and serves `/metrics`,
/// `/healthz` (the process answers) and `/readyz` in the background.
pub async fn serve(address: SocketAddr, endpoint: Endpoint) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(respond(&endpoint, &request)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection");
                }
            });
        }
    });
    Ok(bound)
}

fn respond(endpoint: &Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, render(&endpoint.registry)),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if (endpoint.ready)() => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histogram_is_cumulative_in_the_exposition() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(3));
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_secs(30));
        assert_eq!(histogram.count(), 3);
        #[derive(Debug)]
        struct One(LatencyHistogram);
        impl prometheus_client::collector::Collector for One {
            fn encode(
                &self,
                mut encoder: prometheus_client::encoding::DescriptorEncoder,
            ) -> Result<(), std::fmt::Error> {
                let metric = encoder.encode_descriptor(
                    "op_seconds",
                    "test",
                    None,
                    prometheus_client::metrics::MetricType::Histogram,
                )?;
                self.0.encode(metric)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(histogram)));
        let text = render(&registry);
        assert!(text.contains("# TYPE op_seconds histogram"), "{text}");
        assert!(text.contains("op_seconds_bucket{le=\"1e-05\"} 1"), "{text}");
        assert!(text.contains("op_seconds_bucket{le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("op_seconds_bucket{le=\"10\"} 2"), "{text}");
        assert!(text.contains("op_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("op_seconds_count 3"), "{text}");
        assert!(text.contains("op_seconds_sum 30.002003"), "{text}");
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_health_and_readiness() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("things", "Things done", counter.clone());
        counter.inc_by(5);
        let flag = ready.clone();
        let address = serve(
            "127.0.0.1:0".parse().unwrap(),
            Endpoint {
                registry,
                ready: Box::new(move || flag.load(Ordering::Relaxed)),
            },
        )
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).await.unwrap();
            text
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(metrics.contains("things_total 5"), "{metrics}");
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nothing").await.starts_with("HTTP/1.1 404"));
    }
}
