//! Charts for the comfaas-bench-paper benchmark, which reproduces Tables 1 and 2 of the 2024
//! paper (Monte Carlo Pi over MPI on 2/4/8/16 processes, 1 MB and 500 MB inputs, five sites).
//! [`draw`] writes each chart as PNG and SVG (1000×600 px): `paper-table1` and `paper-table2`
//! (grouped bars per process count and site with min–max whiskers, the paper's value as a hollow
//! circle and the automatic placement as a labelled star), `paper-scatter` (reproduced median
//! against the paper's value with the y = x line, a ±5 % band and, when the 1 MB cells crowd the
//! origin, a zoomed inset), `paper-size` (time against input size per site at 4 processes) and
//! `paper-compute` (measured compute part against process count per host kind, with the ideal
//! scaling dashed). Text is rasterised with DejaVuSans loaded at run time from [`FONT_PATH`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The TTF registered as the `sans-serif` family (Debian package `fonts-dejavu-core`).
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Size of every chart in pixels (PNG and SVG).
const SIZE: (u32, u32) = (1000, 600);

/// Sites in their fixed order and colour.
const SITES: [(&str, RGBColor); 5] = [
    ("edge", RGBColor(230, 120, 20)),
    ("chicago", RGBColor(31, 119, 180)),
    ("los-angeles", RGBColor(44, 160, 44)),
    ("new-york", RGBColor(148, 103, 189)),
    ("miami", RGBColor(214, 39, 40)),
];

/// Process-count groups of the table charts; the last holds only the automatic placement.
const GROUPS: [&str; 5] = ["2", "4", "8", "16", "1-16"];

/// One measured cell: one site, one process count, one table.
#[derive(Debug, Clone)]
pub struct CellData {
    /// 1 (1 MB) or 2 (500 MB).
    pub table: u8,
    /// "edge", "chicago", "los-angeles", "new-york" or "miami".
    pub site: String,
    /// 2, 4, 8 or 16.
    pub procs: u32,
    /// The paper's value in seconds (None when the paper has N/A).
    pub paper_s: Option<f64>,
    /// Median of the runs, seconds.
    pub median_s: f64,
    /// Fastest run, seconds.
    pub min_s: f64,
    /// Slowest run, seconds.
    pub max_s: f64,
}

/// Automatic placement at one process count (or the range "1-16").
#[derive(Debug, Clone)]
pub struct AutoData {
    /// 1 (1 MB) or 2 (500 MB).
    pub table: u8,
    /// "2", "4", "8", "16" or "1-16".
    pub procs: String,
    /// Median of the runs, seconds.
    pub median_s: f64,
    /// The placement chosen, e.g. "edge-1/4" or "chicago-1/16 ×2, edge-1/4".
    pub chosen: String,
}

/// Compute part of one kind of host at one process count.
#[derive(Debug, Clone)]
pub struct ComputeData {
    /// "edge" or "cloud".
    pub host: String,
    /// 2, 4, 8 or 16.
    pub procs: u32,
    /// Median measured compute part, seconds.
    pub measured_s: f64,
    /// Work ÷ procs (ideal scaling from the fitted 2-process value), seconds.
    pub ideal_s: f64,
}

/// Everything the charts show.
#[derive(Debug, Clone)]
pub struct PlotData {
    /// "paper-fit", "stated" or "defaults": goes into every chart's title.
    pub profile: String,
    /// Every measured cell of both tables.
    pub cells: Vec<CellData>,
    /// The automatic placements of both tables.
    pub auto: Vec<AutoData>,
    /// The compute part per host kind and process count.
    pub compute: Vec<ComputeData>,
}

/// The charts, each drawn once per backend.
#[derive(Clone, Copy)]
enum Chart {
    Table(u8),
    Scatter,
    Size,
    Compute,
}

/// Draws every chart into `dir` as PNG and SVG; the files written.
///
/// Fails with a clear error when the font at [`FONT_PATH`] cannot be loaded or a file cannot
/// be written.
pub fn draw(data: &PlotData, dir: &Path) -> Result<Vec<PathBuf>> {
    load_font(Path::new(FONT_PATH))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let charts = [
        ("paper-table1", Chart::Table(1)),
        ("paper-table2", Chart::Table(2)),
        ("paper-scatter", Chart::Scatter),
        ("paper-size", Chart::Size),
        ("paper-compute", Chart::Compute),
    ];
    let mut written = Vec::new();
    for (stem, chart) in charts {
        let png = dir.join(format!("{stem}.png"));
        draw_chart(
            &BitMapBackend::new(&png, SIZE).into_drawing_area(),
            data,
            chart,
        )
        .with_context(|| format!("drawing {}", png.display()))?;
        written.push(png);
        let svg = dir.join(format!("{stem}.svg"));
        draw_chart(
            &SVGBackend::new(&svg, SIZE).into_drawing_area(),
            data,
            chart,
        )
        .with_context(|| format!("drawing {}", svg.display()))?;
        written.push(svg);
    }
    Ok(written)
}

/// Registers the TTF at `path` as `sans-serif` once per process (plotters needs `'static`
/// bytes, so the file is read and leaked once per process).
fn load_font(path: &Path) -> Result<()> {
    static LOADED: OnceLock<PathBuf> = OnceLock::new();
    if LOADED.get().is_some_and(|p| p == path) {
        return Ok(());
    }
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the chart font {} (install the Debian package fonts-dejavu-core)",
            path.display()
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    let _ = LOADED.set(path.to_path_buf());
    Ok(())
}

/// Draws one chart on `root`, fills the background and flushes the file.
fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PlotData,
    chart: Chart,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    match chart {
        Chart::Table(table) => table_chart(root, data, table)?,
        Chart::Scatter => scatter_chart(root, data)?,
        Chart::Size => size_chart(root, data)?,
        Chart::Compute => compute_chart(root, data)?,
    }
    root.present()?;
    Ok(())
}

/// The fixed colour of a site (grey for an unknown one).
fn site_colour(site: &str) -> RGBColor {
    SITES
        .iter()
        .find(|(name, _)| *name == site)
        .map_or(RGBColor(128, 128, 128), |(_, c)| *c)
}

/// A round upper axis bound a bit above `max` (1 when there is nothing to show).
fn axis_max(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.12
    } else {
        1.0
    }
}

/// A five-pointed star of outer radius `r` pixels centred on the origin.
fn star(r: f64) -> Vec<(i32, i32)> {
    (0..10)
        .map(|i| {
            let radius = if i % 2 == 0 { r } else { r * 0.45 };
            let angle = std::f64::consts::PI * (i as f64) / 5.0 - std::f64::consts::FRAC_PI_2;
            (
                (radius * angle.cos()).round() as i32,
                (radius * angle.sin()).round() as i32,
            )
        })
        .collect()
}

/// A chart with plain f64 axes (every chart here).
type Chart2d<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the series legend at `position` in the style shared by every chart.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart2d<'a, DB>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85).filled())
        .border_style(BLACK.stroke_width(1))
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// Grouped bars of one paper table: median per site and process count with whiskers, the
/// paper's value and the automatic placement.
fn table_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &PlotData,
    table: u8,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let cells: Vec<&CellData> = data.cells.iter().filter(|c| c.table == table).collect();
    let autos: Vec<&AutoData> = data.auto.iter().filter(|a| a.table == table).collect();
    let group = |procs: &str| GROUPS.iter().position(|g| *g == procs);
    let y_max = axis_max(
        cells
            .iter()
            .flat_map(|c| [c.max_s, c.median_s, c.paper_s.unwrap_or(0.0)])
            .chain(autos.iter().map(|a| a.median_s))
            .fold(0.0, f64::max),
    ) * 1.35;
    let input = if table == 1 { "1 MB" } else { "500 MB" };
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Table {table} ({input} input), profile {}", data.profile),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(-0.5f64..4.5f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .disable_x_mesh()
        .x_labels(GROUPS.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            match (i - x).abs() < 1e-6 && i >= 0.0 {
                true => GROUPS
                    .get(i as usize)
                    .map_or(String::new(), |g| g.to_string()),
                false => String::new(),
            }
        })
        .y_label_formatter(&tick)
        .x_desc("processes")
        .y_desc("seconds")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()?;

    let slot = 0.8 / SITES.len() as f64;
    let bar_x = |site: usize, procs: u32| {
        group(&procs.to_string()).map(|g| g as f64 - 0.4 + slot * (site as f64 + 0.5))
    };
    for (i, (site, colour)) in SITES.iter().enumerate() {
        let mine: Vec<(f64, &CellData)> = cells
            .iter()
            .filter(|c| c.site == *site)
            .filter_map(|c| bar_x(i, c.procs).map(|x| (x, *c)))
            .collect();
        let half = slot * 0.42;
        chart
            .draw_series(mine.iter().map(|(x, c)| {
                Rectangle::new([(x - half, 0.0), (x + half, c.median_s)], colour.filled())
            }))?
            .label(*site)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        chart.draw_series(mine.iter().map(|(x, c)| {
            PathElement::new([(*x, c.min_s), (*x, c.max_s)], BLACK.stroke_width(1))
        }))?;
        for y in [|c: &CellData| c.min_s, |c: &CellData| c.max_s] {
            chart.draw_series(mine.iter().map(|(x, c)| {
                EmptyElement::at((*x, y(c)))
                    + PathElement::new([(-4, 0), (4, 0)], BLACK.stroke_width(1))
            }))?;
        }
    }
    let stars: Vec<(f64, &AutoData)> = autos
        .iter()
        .filter_map(|a| group(&a.procs).map(|g| (g as f64, *a)))
        .collect();
    let star_style = RGBColor(255, 215, 0).filled();
    let label_font = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    chart
        .draw_series(stars.iter().map(|(x, a)| {
            let half = text_width(&a.chosen, 13) / 2 + 3;
            EmptyElement::at((*x, a.median_s))
                + Rectangle::new([(-half, -33), (half, -15)], WHITE.mix(0.85).filled())
                + Text::new(a.chosen.clone(), (0, -24), label_font.clone())
                + Polygon::new(star(11.0), star_style)
                + PathElement::new(closed(star(11.0)), BLACK.stroke_width(1))
        }))?
        .label("automatic (label: placement)")
        .legend(move |(x, y)| {
            EmptyElement::at((x + 7, y))
                + Polygon::new(star(8.0), star_style)
                + PathElement::new(closed(star(8.0)), BLACK.stroke_width(1))
        });
    let paper: Vec<(f64, f64)> = cells
        .iter()
        .filter_map(|c| {
            let i = SITES.iter().position(|(s, _)| *s == c.site)?;
            Some((bar_x(i, c.procs)?, c.paper_s?))
        })
        .collect();
    chart
        .draw_series(paper.iter().map(|p| EmptyElement::at(*p) + hollow(BLACK)))?
        .label("paper")
        .legend(|(x, y)| EmptyElement::at((x + 7, y)) + hollow(BLACK));
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

/// A hollow circle marker centred on the origin.
fn hollow<C: Color>(colour: C) -> Circle<(i32, i32), i32> {
    Circle::new((0, 0), 6, colour.stroke_width(2))
}

/// Width in pixels of `text` in the sans-serif font at `size` (estimated if layout fails).
fn text_width(text: &str, size: u32) -> i32 {
    let font = ("sans-serif", size).into_font();
    font.box_size(text).map_or(
        text.chars().count() as i32 * size as i32 * 6 / 10,
        |(w, _)| w as i32,
    )
}

/// `points` with the first point repeated at the end, for outlines.
fn closed(mut points: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
    if let Some(first) = points.first().copied() {
        points.push(first);
    }
    points
}

/// Reproduced median against the paper's value for every cell with a paper value; when the
/// 1 MB cells crowd the origin, an inset repeats the chart zoomed on them.
fn scatter_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &PlotData) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points: Vec<(&CellData, f64)> = data
        .cells
        .iter()
        .filter_map(|c| c.paper_s.map(|p| (c, p)))
        .collect();
    let max_of = |table: Option<u8>| {
        points
            .iter()
            .filter(|(c, _)| table.is_none_or(|t| c.table == t))
            .flat_map(|(c, p)| [c.median_s, *p])
            .fold(0.0, f64::max)
    };
    let max = axis_max(max_of(None));
    let title = format!("Reproduced vs paper, both tables, profile {}", data.profile);
    scatter_panel(root, &points, max, Some(&title))?;
    let small = axis_max(max_of(Some(1)));
    if small < max * 0.25 {
        let inset = root.clone().shrink((650, 300), (325, 225));
        inset.fill(&WHITE)?;
        scatter_panel(&inset, &points, small, None)?;
        inset.draw(&Rectangle::new([(0, 0), (324, 224)], BLACK.stroke_width(1)))?;
    }
    Ok(())
}

/// One scatter panel from 0 to `max` on both axes: the full chart with title and legend, or
/// (without a title) a compact inset.
fn scatter_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[(&CellData, f64)],
    max: f64,
    title: Option<&str>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (label_area, desc) = match title {
        Some(_) => (65, ("paper (seconds)", "reproduced median (seconds)")),
        None => (35, ("", "")),
    };
    let mut builder = ChartBuilder::on(area);
    match title {
        Some(title) => builder.caption(title, ("sans-serif", 24)).margin(12),
        None => builder
            .caption("zoom on the small values", ("sans-serif", 14))
            .margin(8),
    };
    let mut chart = builder
        .x_label_area_size(label_area - 10)
        .y_label_area_size(label_area)
        .build_cartesian_2d(0f64..max, 0f64..max)?;
    let points: Vec<_> = points
        .iter()
        .filter(|(c, p)| c.median_s <= max && *p <= max)
        .collect();
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc(desc.0)
        .y_desc(desc.1)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()?;
    let band = RGBColor(120, 120, 120).mix(0.2);
    chart
        .draw_series(std::iter::once(Polygon::new(
            vec![(0.0, 0.0), (max, max * 1.05), (max, max * 0.95)],
            band.filled(),
        )))?
        .label("±5 %")
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], band.filled()));
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (max, max)],
            BLACK.stroke_width(1),
        ))?
        .label("y = x")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(1)));
    for (site, colour) in SITES {
        let mine = points.iter().filter(|(c, _)| c.site == site);
        chart
            .draw_series(mine.map(|(c, p)| -> DynElement<'static, DB, (f64, f64)> {
                let style = colour.filled();
                match c.table {
                    1 => Circle::new((*p, c.median_s), 6, style).into_dyn(),
                    _ => TriangleMarker::new((*p, c.median_s), 8, style).into_dyn(),
                }
            }))?
            .label(site)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    }
    if title.is_none() {
        return Ok(());
    }
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("table 1 (1 MB)")
        .legend(|(x, y)| Circle::new((x + 7, y), 6, BLACK.filled()));
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("table 2 (500 MB)")
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 8, BLACK.filled()));
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// An axis tick label: the value with at most three decimals and no trailing zeros.
fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Time against input size (1 MB and 500 MB) per site at 4 processes.
fn size_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &PlotData) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mb = |table: u8| if table == 1 { 1.0 } else { 500.0 };
    let cells: Vec<&CellData> = data.cells.iter().filter(|c| c.procs == 4).collect();
    let y_max = axis_max(
        cells
            .iter()
            .flat_map(|c| [c.median_s, c.paper_s.unwrap_or(0.0)])
            .fold(0.0, f64::max),
    );
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "Time vs input size at 4 processes, profile {}",
                data.profile
            ),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..525f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .x_desc("input (MB)")
        .y_desc("seconds")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()?;
    for (site, colour) in SITES {
        let mut mine: Vec<&CellData> = cells.iter().filter(|c| c.site == site).copied().collect();
        mine.sort_by_key(|c| c.table);
        chart
            .draw_series(LineSeries::new(
                mine.iter().map(|c| (mb(c.table), c.median_s)),
                colour.stroke_width(2),
            ))?
            .label(site)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        chart.draw_series(
            mine.iter()
                .map(|c| Circle::new((mb(c.table), c.median_s), 4, colour.filled())),
        )?;
        chart.draw_series(mine.iter().filter_map(|c| {
            c.paper_s
                .map(|p| EmptyElement::at((mb(c.table), p)) + hollow(colour))
        }))?;
    }
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label("paper (hollow)")
        .legend(|(x, y)| Circle::new((x + 7, y), 6, BLACK.stroke_width(2)));
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Measured compute part against process count per host kind, with the ideal scaling dashed.
fn compute_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, data: &PlotData) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let log2 = |p: u32| f64::from(p.max(1)).log2();
    let y_max = axis_max(
        data.compute
            .iter()
            .flat_map(|c| [c.measured_s, c.ideal_s])
            .fold(0.0, f64::max),
    );
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Compute part vs processes, profile {}", data.profile),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.7f64..4.3f64, 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round();
            match (i - x).abs() < 1e-6 && (1.0..=4.0).contains(&i) {
                true => format!("{}", 2u32.pow(i as u32)),
                false => String::new(),
            }
        })
        .y_label_formatter(&tick)
        .x_desc("processes (log2 scale)")
        .y_desc("compute seconds")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()?;
    let hosts = [
        ("edge", site_colour("edge")),
        ("cloud", RGBColor(70, 70, 70)),
    ];
    for (host, colour) in hosts {
        let mut mine: Vec<&ComputeData> = data.compute.iter().filter(|c| c.host == host).collect();
        mine.sort_by_key(|c| c.procs);
        chart
            .draw_series(LineSeries::new(
                mine.iter().map(|c| (log2(c.procs), c.measured_s)),
                colour.stroke_width(2),
            ))?
            .label(format!("{host} measured"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        chart.draw_series(
            mine.iter()
                .map(|c| Circle::new((log2(c.procs), c.measured_s), 5, colour.filled())),
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                mine.iter().map(|c| (log2(c.procs), c.ideal_s)),
                6,
                5,
                colour.stroke_width(2),
            ))?
            .label(format!("{host} ideal (work ÷ procs)"))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (5, 0)], colour.stroke_width(2))
                    + PathElement::new([(9, 0), (14, 0)], colour.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_font_is_an_error() {
        let err = load_font(Path::new("/nonexistent/font.ttf")).unwrap_err();
        assert!(format!("{err:#}").contains("fonts-dejavu-core"), "{err:#}");
    }

    #[test]
    fn empty_data_still_draws() {
        let data = PlotData {
            profile: "defaults".to_string(),
            cells: Vec::new(),
            auto: Vec::new(),
            compute: Vec::new(),
        };
        let dir = std::env::temp_dir().join(format!("plots-test-{}", std::process::id()));
        let files = draw(&data, &dir).unwrap();
        assert_eq!(files.len(), 10);
        assert!(files.iter().all(|f| f.exists()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(&70.0), "70");
        assert_eq!(tick(&2.5), "2.5");
        assert_eq!(tick(&0.05), "0.05");
    }

    #[test]
    fn star_has_ten_points() {
        assert_eq!(star(10.0).len(), 10);
        assert_eq!(star(10.0)[0], (0, -10));
    }

    #[test]
    fn unknown_site_is_grey() {
        assert_eq!(site_colour("mars"), RGBColor(128, 128, 128));
        assert_eq!(site_colour("edge"), SITES[0].1);
    }
}
