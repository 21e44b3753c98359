//! `roleplay sim-server`: the simulator behind an OpenAI-compatible HTTP API, until SIGTERM or
//! SIGINT. Turns the flags into a checked [`ServerConfig`], binds, announces the address (stdout
//! and `--addr-file`), and serves.

use crate::cli::SimServerArgs;
use crate::error::{Error, Result};
use crate::experiment::SimSettings;
use crate::simserver::{self, Faults, ServerConfig};

pub fn run(args: SimServerArgs) -> Result<i32> {
    let config = config(&args)?;
    let rt = super::runtime()?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| {
                Error::runtime(format!("cannot listen on `{}:{}`: {e}", args.host, args.port))
                    .with_hint("pick another `--port`, or `--port 0` for any free one")
            })?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        if let Some(path) = &args.addr_file {
            crate::rundir::write_atomic(path, url.as_bytes())?;
        }
        crate::outln!("listening on {url}");
        let served = simserver::serve(listener, config, stop_signal()).await;
        if let Some(path) = &args.addr_file {
            // A stale address would send the next reader to a closed port.
            let _ = fs_err::remove_file(path);
        }
        served.map_err(|e| Error::runtime(format!("the sim-server at `{url}` failed: {e}")))
    });
    // Hung requests may still sleep: do not wait for them.
    rt.shutdown_background();
    result.map(|()| 0)
}

fn config(a: &SimServerArgs) -> Result<ServerConfig> {
    let s = &a.sim;
    let f = &a.faults;
    let config = ServerConfig {
        sim: SimSettings {
            no_prompt_rate: s.no_prompt_rate,
            multi_prompt_rate: s.multi_prompt_rate,
            degenerate_rate: s.degenerate_rate,
            empty_rate: s.empty_rate,
            stop_after_turns: s.stop_after_turns.0,
            latency_ms: s.latency_ms,
            words: s.words.0,
        },
        faults: Faults {
            fail_5xx_rate: f.fail_5xx_rate,
            rate_limit_rate: f.rate_limit_rate,
            retry_after_secs: f.retry_after_secs,
            hang_rate: f.hang_rate,
            hang_secs: f.hang_secs,
            drop_rate: f.drop_rate,
            malformed_rate: f.malformed_rate,
            html_rate: f.html_rate,
            context_error_rate: f.context_error_rate,
        },
        latency_jitter_ms: s.latency_jitter_ms,
        seed: f.seed,
        require_key: a.require_key.clone(),
        context_length: a.context_length,
        limit_rps: a.limits.limit_rps,
        limit_tps: a.limits.limit_tps,
        judge_malformed_rate: a.judge_malformed_rate,
    };
    if !(0.0..=1.0).contains(&a.judge_malformed_rate) {
        return Err(Error::config(format!(
            "`--judge-malformed-rate {}` is not a rate",
            a.judge_malformed_rate
        ))
        .with_hint("rates are from 0 to 1"));
    }
    config
        .check()
        .map_err(|msg| Error::config(msg).with_hint("see `roleplay sim-server --help`"))?;
    Ok(config)
}

/// Completes on the first SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
