//! `flexgate probe URL`: a tiny HTTP GET for container health checks (the runtime image
//! has no curl). Exit 0 on a 2xx answer within the timeout, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// An http:// URL, e.g. http://127.0.0.1:9090/readyz.
    url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

impl ProbeArgs {
    pub(crate) async fn run(self) -> anyhow::Result<ExitCode> {
        let uri: http::Uri = self.url.parse().context("not a URL")?;
        anyhow::ensure!(
            uri.scheme() == Some(&http::uri::Scheme::HTTP),
            "only http:// URLs are supported"
        );
        let authority = uri.authority().context("the URL has no host")?.clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let exchange = async move {
            let address = format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            );
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header(http::header::HOST, authority.as_str())
                .body(Empty::<Bytes>::new())?;
            anyhow::Ok(sender.send_request(request).await?)
        };
        let answer = tokio::time::timeout(Duration::from_secs(self.timeout), exchange)
            .await
            .context("no answer in time")?
            .context("request failed")?;
        let status = answer.status();
        println!("{status}");
        Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
