//! Monte Carlo Pi over MPI: each rank counts the points of its slice of the
//! input file that fall inside the quarter circle; the counts are reduced
//! to rank 0, which prints `{"pi", "points", "procs", "seconds"}`.
//!
//! Input: pairs of little-endian u32 (x, y), each divided by 2^32 to lie in
//! [0, 1). The executor names the file in `COMFAAS_INPUT_FILE`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::ExitCode;

use mpi::collective::SystemOperation;
use mpi::traits::*;

const POINT: u64 = 8;
const SCALE: f64 = 4_294_967_296.0;

fn count_inside(path: &str, first: u64, last: u64) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(first * POINT))?;
    let mut left = (last - first) * POINT;
    let mut buf = vec![0u8; 1 << 20];
    let mut inside = 0u64;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        for p in buf[..want].chunks_exact(8) {
            let x = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as f64 / SCALE;
            let y = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as f64 / SCALE;
            if x * x + y * y < 1.0 {
                inside += 1;
            }
        }
        left -= want as u64;
    }
    Ok(inside)
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI could not be initialised");
        return ExitCode::from(2);
    };
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let started = mpi::time();
    let path = std::env::var("COMFAAS_INPUT_FILE").unwrap_or_default();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if bytes == 0 || bytes % POINT != 0 {
        if rank == 0 {
            eprintln!("input must be a non-empty set of points (8 bytes each), got {bytes} bytes");
        }
        return ExitCode::from(2);
    }
    let points = bytes / POINT;
    let first = points * rank as u64 / size as u64;
    let last = points * (rank as u64 + 1) / size as u64;
    let local = match count_inside(&path, first, last) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("rank {rank}: cannot read {path}: {e}");
            world.abort(2);
        }
    };
    let root = world.process_at_rank(0);
    if rank == 0 {
        let mut inside = 0u64;
        root.reduce_into_root(&local, &mut inside, SystemOperation::sum());
        let pi = 4.0 * inside as f64 / points as f64;
        println!(
            "{{\"pi\": {pi:.10}, \"points\": {points}, \"procs\": {size}, \"seconds\": {:.6}}}",
            mpi::time() - started
        );
    } else {
        root.reduce_into(&local, SystemOperation::sum());
    }
    ExitCode::SUCCESS
}
