//! TCP probe: one-byte request/response and bulk throughput over loopback.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{goal, paired, rotate, row, tracer::attached, write_rows, Row, Tracer};
use crate::root;

pub struct TcpBench {
    rr: Vec<Row>,
    bulk: Vec<Row>,
    rounds: usize,
}

pub fn bench(rounds: usize) -> Result<TcpBench> {
    const PORT: u16 = 5299;
    let tracers = [Tracer::Nothing, Tracer::TcpFloor, Tracer::HostprobeProbe("tcp")];
    let rr = rotate("TCP request/response", rounds, &tracers, |t| attached(t, tcp_rr))?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-p", &PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (cargo xtask setup --bench installs it)")?;
    std::thread::sleep(Duration::from_millis(500));
    let bulk = rotate("TCP bulk (iperf3)", rounds, &tracers, |t| attached(t, || iperf3(PORT)));
    let _ = server.kill();
    let _ = server.wait();
    Ok(TcpBench { rr: paired(&tracers, &rr), bulk: paired(&tracers, &bulk?), rounds })
}

/// Round trips per second of the one-byte loopback request/response, both
/// ends on CPU 1.
fn tcp_rr() -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root().join("target/release/workload"))
        .args(["tcp-rr", "3000"])
        .output()
        .context("running the request/response loop")?;
    if !out.status.success() {
        bail!("request/response loop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing round trips per second")
}

/// Gbit/s of a 3 s `iperf3` transfer over loopback to the server on `port`.
fn iperf3(port: u16) -> Result<f64> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", "3", "-J"])
        .output()
        .context("running iperf3 (cargo xtask setup --bench installs it)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    json["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e9).context("no throughput in iperf3 output")
}

impl TcpBench {
    pub fn write(&self, md: &mut String) -> Result<()> {
        writeln!(md, "\n## TCP probe: request/response and bulk throughput\n")?;
        writeln!(
            md,
            "Request/response: a client and an echo server (two threads of one process, both \
             pinned to CPU 1) bounce one byte over loopback TCP with TCP_NODELAY for 3 s; every \
             round trip is two sends, two receives and two segments in. Bulk: `iperf3 -c \
             127.0.0.1 -t 3` against `iperf3 -s`. The floor is the least any program on the TCP \
             probe's per-packet hooks costs: programs that do nothing, on the same raw tracepoints. \
             {} rounds, order rotated (for request/response, latency per request is the inverse of \
             the rate).\n",
            self.rounds
        )?;
        write_rows(md, "round trips/s", 0, &self.rr)?;
        writeln!(md)?;
        write_rows(md, "iperf3 Gbit/s", 2, &self.bulk)?;
        writeln!(md)?;
        for (what, rows) in [("request/response", &self.rr), ("bulk", &self.bulk)] {
            if let Some(r) = row(rows, Tracer::HostprobeProbe("tcp")) {
                let cost = (1.0 - r.ratio) * 100.0;
                let floor =
                    row(rows, Tracer::TcpFloor).map(|f| format!(" (the floor: {:.1}%)", (1.0 - f.ratio) * 100.0));
                goal(
                    md,
                    &format!("the TCP probe costs under 3% of {what} throughput"),
                    &format!("{cost:.1}%{}", floor.unwrap_or_default()),
                    cost < 3.0,
                )?;
            }
        }
        Ok(())
    }
}
