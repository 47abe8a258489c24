//! `flexgate probe URL`: a tiny HTTP GET for container health checks (the runtime image
//! has no curl). Exit 0 on a 2xx answer within the timeout, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let answer = tokio::time::timeout(Duration::from_secs(self.timeout), client.get(uri))
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
