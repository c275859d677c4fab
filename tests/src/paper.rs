//! The paper's Pi job (`tests/functions/paper-pi`) from the outside: the
//! exact count it must find, and its bundle written with a profile, for
//! its test and `comfaas-bench-paper`.

use std::path::{Path, PathBuf};

/// Blocks of points the job splits its work into: 64 divides evenly over
/// 1, 2, 4, 8 and 16 ranks.
pub const BLOCKS: u64 = 64;

/// The points inside the quarter circle out of `blocks × per_block`,
/// counted as `pi.py` counts them (the same generator, seeds and test), so
/// that every run's answer is checked exactly.
pub fn count_inside(blocks: u64, per_block: u64) -> u64 {
    const A: u32 = 1_664_525;
    const C: u32 = 1_013_904_223;
    let mut inside = 0;
    for block in 0..blocks {
        let mut x = (block.wrapping_mul(2_654_435_761).wrapping_add(12_345) & 0xFFFF_FFFF) as u32;
        for _ in 0..per_block {
            x = A.wrapping_mul(x).wrapping_add(C);
            let a = u128::from(x);
            x = A.wrapping_mul(x).wrapping_add(C);
            let b = u128::from(x);
            if a * a + b * b < (1u128 << 64) {
                inside += 1;
            }
        }
    }
    inside
}

/// Writes the job's bundle folder `dir/name`: its code, its manifest under
/// `name` and `version`, and `profile` as `profile.json` (`blocks`,
/// `points_per_block`, `nodes: {<node>: {compute_s: {<procs>: s},
/// site_delay_s}}`); its path.
pub fn bundle(
    dir: &Path,
    name: &str,
    version: &str,
    profile: &serde_json::Value,
) -> std::io::Result<PathBuf> {
    let src = crate::repo_root().join("tests/functions/paper-pi");
    let out = dir.join(name);
    std::fs::create_dir_all(&out)?;
    let manifest = std::fs::read_to_string(src.join("comfaas.toml"))?
        .replace("name = \"paper-pi\"", &format!("name = \"{name}\""))
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""));
    std::fs::write(out.join("comfaas.toml"), manifest)?;
    std::fs::copy(src.join("pi.py"), out.join("pi.py"))?;
    std::fs::write(
        out.join("profile.json"),
        serde_json::to_vec_pretty(profile).map_err(std::io::Error::other)?,
    )?;
    Ok(out)
}
