//! The benchmark's report: the two tables in the paper's shape (paper
//! value, median [min–max], ratio), the automatic placement, each cell's
//! time split, the calibration, a CSV of every run and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::paper::{self, Fit};
use crate::plots::{self, AutoData, CellData, ComputeData, PlotData};

/// One measured run, as the CSV has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    /// Round, from 1 (0: calibration).
    pub round: usize,
    /// 1 (1 MB) or 2 (500 MB).
    pub table: u8,
    /// `node:<id>` or `auto`.
    pub placement: String,
    /// The site asked for, or `auto`.
    pub site: String,
    /// The `Comfaas-Procs` header sent.
    pub procs_asked: String,
    /// The node that ran it.
    pub node: String,
    /// Its site.
    pub ran_site: String,
    /// Processes it ran with.
    pub procs: u32,
    /// Input size.
    pub input_bytes: u64,
    /// From before the upload to the reply.
    pub total_s: f64,
    /// The device's upload to the edge (hash and put).
    pub upload_s: f64,
    /// The node's fetch of the input (`Comfaas-Fetch-Ms`).
    pub fetch_s: f64,
    /// Wait for a slot (`Comfaas-Queue-Ms`).
    pub queue_s: f64,
    /// What is left: request, dispatch, work subject and reply.
    pub round_trip_s: f64,
    /// `mpirun` until the ranks run, and their exit.
    pub launch_s: f64,
    /// The fixed per-site delay waited (fitted; 0 unless `paper-fit`).
    pub site_delay_s: f64,
    /// Rank 0 reading and checksumming the input.
    pub read_s: f64,
    /// The compute part: counted for real plus waited to the profile.
    pub compute_s: f64,
    /// Of which counted for real (the slowest rank).
    pub computed_s: f64,
    /// Of which waited out.
    pub waited_s: f64,
    /// How far the real part overran the profile.
    pub over_s: f64,
    /// The estimate of pi.
    pub pi: f64,
}

/// One link's calibration.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// e.g. `edge → chicago`.
    pub path: String,
    /// The profile's round trip.
    pub rtt_expected_ms: f64,
    /// Measured (median of 21 requests).
    pub rtt_ms: f64,
    /// Within ±2 ms.
    pub rtt_ok: bool,
    /// The profile's bandwidth (the narrower of link and uplink).
    pub bw_expected_mbit: f64,
    /// Measured, per transfer size in MiB.
    pub bw_mbit: Vec<(u64, f64)>,
    /// Every transfer within ±5 %.
    pub bw_ok: bool,
}

/// The transfer fit of one path (under `paper-fit`).
#[derive(Debug, Clone)]
pub struct TransferFit {
    /// e.g. `edge → chicago`.
    pub path: String,
    /// Seconds the paper's extra 499 MB leave to this path.
    pub target_s: f64,
    /// What this path took for them on the first fit's link.
    pub measured_s: f64,
    /// Of which this platform's own (not the link's bandwidth).
    pub overhead_s: f64,
    /// The first fit's bandwidth (all of the paper's extra time the
    /// link's), Mbit/s.
    pub first_mbit: f64,
    /// The bandwidth fitted, Mbit/s.
    pub fitted_mbit: f64,
    /// Whether the platform's own time left the link any time at all.
    pub reachable: bool,
}

/// The transfer fit's table.
pub fn transfer_fit_text(rows: &[TransferFit]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "Transfers fitted net of the platform's own time (1 MB and 500 MB through each path, no compute): \n\n| path | paper's extra 499 MB s | took on the first fit s | platform's own s | first fit Mbit/s | fitted Mbit/s |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {}{} |",
            r.path,
            r.target_s,
            r.measured_s,
            r.overhead_s,
            r.first_mbit,
            if r.fitted_mbit.is_finite() {
                format!("{:.0}", r.fitted_mbit)
            } else {
                "unlimited".to_owned()
            },
            if r.reachable {
                ""
            } else {
                " (**not reachable**: the platform alone takes longer)"
            }
        );
    }
    s
}

/// Everything measured before the runs.
pub struct Calibrated<'a> {
    /// The transfer fit (empty unless `paper-fit` without `--quick`).
    pub transfers: &'a [TransferFit],
    /// The links' round trips and bandwidths.
    pub links: &'a [Calibration],
    /// The platform's own time per site.
    pub own: &'a BTreeMap<String, f64>,
    /// The fixed per-site delays fitted.
    pub delays: &'a BTreeMap<String, f64>,
}

/// What the report says about the run itself.
#[derive(Debug, Clone)]
pub struct Header {
    /// Link profile.
    pub profile: String,
    /// Where its numbers come from.
    pub links: String,
    /// Rounds.
    pub rounds: usize,
    /// Forced runs at once.
    pub lanes: usize,
    /// Pi points per second per process, this machine.
    pub rate_per_s: f64,
    /// Points each run counts for real.
    pub points: u64,
    /// Wall time of the whole benchmark.
    pub minutes: f64,
}

/// The fit, in words.
pub fn fit_text(fit: &Fit) -> String {
    let mut s = String::from("## The paper's tables, fitted\n\n");
    let _ = writeln!(
        s,
        "- cloud host: {:.2} process-seconds of work, 8 cores, 16 threads, a hyper-thread adds {:.0} % of a core: {}",
        fit.cloud.work_s,
        (fit.cloud.ht_gain - 1.0) * 100.0,
        seconds_list(|p| fit.cloud.seconds(p), &paper::PROCS)
    );
    let _ = writeln!(
        s,
        "- edge host: {:.2} process-seconds, 4 cores: {}",
        fit.edge.work_s,
        seconds_list(|p| fit.edge.seconds(p), &[2, 4])
    );
    for site in paper::SITES {
        let part = fit.site_part[site];
        let _ = writeln!(
            s,
            "- {site}: per-site part {:.2} s (1 MB), {:.2} s (500 MB); the extra 499 MB took {:.1} s",
            part[0], part[1], fit.extra_s[site]
        );
    }
    let _ = writeln!(
        s,
        "- implied bandwidths: device → edge {:.0} Mbit/s; {}",
        fit.device_bits_per_s / 1e6,
        fit.cloud_bits_per_s
            .iter()
            .map(|(site, bw)| format!("edge → {site} {:.0} Mbit/s", bw / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- worst |model − paper| over the 36 cells: {:.3} s",
        fit.worst_residual_s
    );
    s
}

fn seconds_list(f: impl Fn(u32) -> f64, procs: &[u32]) -> String {
    procs
        .iter()
        .map(|p| format!("{p}p {:.2} s", f(*p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The calibration table.
pub fn calibration_text(rows: &[Calibration]) -> String {
    let mut s = String::from(
        "| path | round trip: profile ms | measured ms | ±2 ms | bandwidth: profile Mbit/s | 16 MiB | 128 MiB | ±5 % |\n|---|---:|---:|---|---:|---:|---:|---|\n",
    );
    for r in rows {
        let bw = |mb: u64| {
            r.bw_mbit
                .iter()
                .find(|(m, _)| *m == mb)
                .map_or("–".to_owned(), |(_, b)| format!("{b:.1}"))
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} | {:.1} | {} | {} | {} |",
            r.path,
            r.rtt_expected_ms,
            r.rtt_ms,
            ok(r.rtt_ok),
            r.bw_expected_mbit,
            bw(16),
            bw(128),
            ok(r.bw_ok)
        );
    }
    s
}

fn ok(good: bool) -> &'static str {
    if good {
        "ok"
    } else {
        "**off**"
    }
}

/// The platform's own time per site and the delays fitted from it.
pub fn own_time_text(
    own: &BTreeMap<String, f64>,
    delays: &BTreeMap<String, f64>,
    fit: &Fit,
) -> String {
    let mut s = String::from(
        "The platform's own time per site (the job with no compute and no delay, 2 processes, 1 MB, median of 3) and the fixed per-site delay fitted from it (the paper's per-site part of Table 1 less it; none unless the profile is paper-fit):\n\n| site | own s | paper's per-site part s | fitted delay s |\n|---|---:|---:|---:|\n",
    );
    for site in paper::SITES {
        let _ = writeln!(
            s,
            "| {site} | {:.2} | {:.2} | {} |",
            own.get(site).copied().unwrap_or(f64::NAN),
            fit.site_part[site][0],
            delays
                .get(site)
                .map_or("–".to_owned(), |d| format!("{d:.2}"))
        );
    }
    s
}

/// Median, min and max.
fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v[0], v[v.len() - 1]))
}

/// Median of `values` (0 if none).
pub fn median(values: &[f64]) -> f64 {
    stats(values).map_or(0.0, |s| s.0)
}

/// Whether a reproduced value matches the paper's: within ±5 % or ±1 s.
pub fn matches(measured: f64, paper: f64) -> bool {
    (measured - paper).abs() <= (0.05 * paper).max(1.0)
}

/// What [`write`] produced.
pub struct Written {
    /// The report, Markdown.
    pub text: String,
    /// The files written.
    pub files: Vec<PathBuf>,
}

type Key = (u8, String, u32);

/// Every forced run's times by (table, site, procs).
fn forced(records: &[RunRecord]) -> BTreeMap<Key, Vec<&RunRecord>> {
    let mut cells: BTreeMap<Key, Vec<&RunRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.site != "auto") {
        cells
            .entry((r.table, r.site.clone(), r.procs))
            .or_default()
            .push(r);
    }
    cells
}

fn median_of(runs: &[&RunRecord], f: impl Fn(&RunRecord) -> f64) -> f64 {
    stats(&runs.iter().map(|r| f(r)).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.0)
}

/// Writes `report.md`, `runs.csv` and the plots into `out`.
pub fn write(
    out: &Path,
    header: &Header,
    fit: &Fit,
    calibrated: &Calibrated<'_>,
    records: &[RunRecord],
) -> anyhow::Result<Written> {
    let cells = forced(records);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# comfaas-bench-paper: profile {}\n\n- links: {}\n- {} round(s), {} forced run(s) at once (each on its own site with its own device link; automatic runs alone), {:.1} min in all\n- compute: each run counts {} points for real ({:.2} M points/s per process measured here), the rest of each rank's compute time is waited out to its site's profile; pi is checked exactly against the same count made by the benchmark, rank 0's CRC-32 of the input against the bytes sent (the node checked its SHA-256 as it fetched it)\n",
        header.profile,
        header.links,
        header.rounds,
        header.lanes,
        header.minutes,
        header.points,
        header.rate_per_s / 1e6
    );
    text.push_str(&fit_text(fit));
    text.push_str("\n## Calibration\n\n");
    text.push_str(&transfer_fit_text(calibrated.transfers));
    text.push('\n');
    text.push_str(&calibration_text(calibrated.links));
    text.push('\n');
    text.push_str(&own_time_text(calibrated.own, calibrated.delays, fit));

    let (mut good, mut compared) = (0, 0);
    let mut plot_cells = Vec::new();
    let mut auto_data = Vec::new();
    let (mut auto_good, mut auto_cases) = (0, 0);
    let mut auto_rows = String::new();
    for table in [1u8, 2] {
        let mb = paper::INPUT_BYTES[table as usize - 1] / 1_000_000;
        let _ = writeln!(
            text,
            "\n## Table {table}: {mb} MB input, seconds (paper · reproduced median [min–max] · ratio)\n"
        );
        text.push_str("| site | 2 | 4 | 8 | 16 | 1-16 |\n|---|---|---|---|---|---|\n");
        for site in paper::SITES {
            let _ = write!(text, "| {site} |");
            for procs in paper::PROCS {
                let runs = cells.get(&(table, site.to_owned(), procs));
                let paper_s = paper::paper(table, site, procs);
                match (
                    runs.and_then(|r| stats(&r.iter().map(|r| r.total_s).collect::<Vec<_>>())),
                    paper_s,
                ) {
                    (Some((m, lo, hi)), paper_s) => {
                        let cmp = paper_s.map_or(String::new(), |p| {
                            compared += 1;
                            let hit = matches(m, p);
                            good += usize::from(hit);
                            format!(" · {:.2}{}", m / p, if hit { "" } else { " ✗" })
                        });
                        let _ = write!(
                            text,
                            " {} · {m:.2} [{lo:.2}–{hi:.2}]{cmp} |",
                            paper_s.map_or("N/A".to_owned(), |p| format!("{p:.3}"))
                        );
                        plot_cells.push(CellData {
                            table,
                            site: site.to_owned(),
                            procs,
                            paper_s,
                            median_s: m,
                            min_s: lo,
                            max_s: hi,
                        });
                    }
                    (None, Some(p)) => {
                        let _ = write!(text, " {p:.3} · – |");
                    }
                    (None, None) => text.push_str(" N/A |"),
                }
            }
            text.push_str(" |\n");
        }
        // The automatic row.
        text.push_str("| **automatic** |");
        let labels: Vec<String> = paper::PROCS
            .iter()
            .map(|p| p.to_string())
            .chain(std::iter::once("1-16".to_owned()))
            .collect();
        for label in &labels {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| r.site == "auto" && r.table == table && &r.procs_asked == label)
                .collect();
            if runs.is_empty() {
                text.push_str(" – |");
                continue;
            }
            let m = median_of(&runs, |r| r.total_s);
            let mut chosen: BTreeMap<String, usize> = BTreeMap::new();
            for r in &runs {
                *chosen.entry(format!("{}/{}", r.node, r.procs)).or_default() += 1;
            }
            let chosen = chosen
                .iter()
                .map(|(n, c)| {
                    if *c == 1 {
                        n.clone()
                    } else {
                        format!("{n} ×{c}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            // The best site: the fastest forced cell that fits the ask.
            let fits = |p: u32| label == "1-16" || label.parse::<u32>() == Ok(p);
            let best = cells
                .iter()
                .filter(|((t, _, p), _)| *t == table && fits(*p))
                .map(|((_, s, p), runs)| (format!("{s}/{p}"), median_of(runs, |r| r.total_s)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let (best_name, best_s) = best.unwrap_or(("–".to_owned(), f64::NAN));
            let ratio = m / best_s;
            auto_cases += 1;
            let hit = ratio <= 1.10;
            auto_good += usize::from(hit);
            let _ = write!(
                text,
                " {chosen} · {m:.2} · ÷best {ratio:.2}{} |",
                if hit { "" } else { " ✗" }
            );
            let _ = writeln!(
                auto_rows,
                "| {table} | {label} | {chosen} | {m:.2} | {best_name} | {best_s:.2} | {ratio:.2} | {} |",
                if hit { "yes" } else { "**no**" }
            );
            auto_data.push(AutoData {
                table,
                procs: label.clone(),
                median_s: m,
                chosen,
            });
        }
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "\n## Automatic placement against the best site\n\n| table | procs | chosen (node/procs) | median s | best site/procs | best s | ÷ best | within 10 % |\n|---|---|---|---:|---|---:|---:|---|\n{auto_rows}"
    );

    // Where the time goes.
    text.push_str("\n## Where each cell's time goes (medians, seconds)\n\n| table | site | procs | total | round trip | upload (device → edge) | fetch (edge → site) | MPI launch | site delay (fitted, waited) | read input | compute (counted + waited) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for ((table, site, procs), runs) in &cells {
        let _ = writeln!(
            text,
            "| {table} | {site} | {procs} | {:.2} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ({:.2} + {:.2}) |",
            median_of(runs, |r| r.total_s),
            median_of(runs, |r| r.round_trip_s),
            median_of(runs, |r| r.upload_s),
            median_of(runs, |r| r.fetch_s),
            median_of(runs, |r| r.launch_s),
            median_of(runs, |r| r.site_delay_s),
            median_of(runs, |r| r.read_s),
            median_of(runs, |r| r.compute_s),
            median_of(runs, |r| r.computed_s),
            median_of(runs, |r| r.waited_s),
        );
    }
    let worst_over = records.iter().map(|r| r.over_s).fold(0.0, f64::max);
    let _ = writeln!(
        text,
        "\n## Summary\n\n- cells within ±5 % or ±1 s of the paper: **{good} of {compared}**\n- automatic placement within 10 % of the best site: **{auto_good} of {auto_cases}** cells\n- every one of the {} runs gave the expected pi count and input checksum; the real counting overran its profiled time by at most {worst_over:.2} s",
        records.len()
    );

    // Compute against ideal, per kind of host.
    let mut compute = Vec::new();
    for (host, procs) in [("edge", &[2u32, 4][..]), ("cloud", &paper::PROCS[..])] {
        let profile = if host == "edge" {
            &fit.edge
        } else {
            &fit.cloud
        };
        for &p in procs {
            let runs: Vec<&RunRecord> = cells
                .iter()
                .filter(|((_, s, q), _)| *q == p && paper::is_edge(s) == (host == "edge"))
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            if runs.is_empty() {
                continue;
            }
            compute.push(ComputeData {
                host: host.to_owned(),
                procs: p,
                measured_s: median_of(&runs, |r| r.compute_s),
                ideal_s: profile.seconds(2) * 2.0 / f64::from(p),
            });
        }
    }

    let mut files = Vec::new();
    let csv_path = out.join("runs.csv");
    let mut csv = csv::Writer::from_path(&csv_path)?;
    for r in records {
        csv.serialize(r)?;
    }
    csv.flush()?;
    files.push(csv_path);
    let data = PlotData {
        profile: header.profile.clone(),
        cells: plot_cells,
        auto: auto_data,
        compute,
    };
    match plots::draw(&data, out) {
        Ok(drawn) => files.extend(drawn),
        Err(e) => {
            let _ = writeln!(text, "\nplots not drawn: {e:#}");
        }
    }
    let report = out.join("report.md");
    std::fs::write(&report, &text)?;
    files.push(report);
    Ok(Written { text, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_matches_within_five_percent_or_one_second() {
        assert!(matches(10.9, 10.0));
        assert!(!matches(11.1, 10.0));
        assert!(matches(62.0, 60.0));
        assert!(!matches(64.0, 60.0));
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[]), None);
    }
}
