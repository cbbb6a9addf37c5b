//! SVG charts for the benchmark report: latency percentile curves and throughput over time.
//!
//! plotters is built without its font features (`ttf` needs fontconfig and freetype,
//! `ab_glyph` a font file). Without them the SVG backend still writes every title, tick label
//! and legend entry as a `<text>` element that the viewer lays out with its own fonts; plotters
//! only estimates text widths (about 0.7 em per byte) to reserve room, so the label areas and
//! the legend column below are sized with some slack.

use std::fmt::Display;
use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const SIZE: (u32, u32) = (900, 500);
const FONT: &str = "sans-serif";

/// Colors by series position, so a report that passes its systems in one order (millpond,
/// hashmap, rocksdb, forst, baseline) gets the same color for a system in every chart; the
/// fifth is grey because it is meant for the baseline.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One curve: `points` are (x, y) in the units the chart function documents.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Operations counted per fixed-length bucket since the start of a phase.
pub struct Timeline {
    pub name: String,
    pub bucket_ms: u64,
    pub ops: Vec<u64>,
    /// When this system's snapshot ran: start and end, in seconds since the phase start.
    pub snapshot: Option<(f64, f64)>,
}

/// Latency distribution: x = percentile (0..=100), y = latency in nanoseconds.
///
/// x is drawn as HdrHistogram plots do, on a log scale of 1/(1 - p/100), so each further nine
/// (90%, 99%, 99.9%, ...) gets the same width and the tail is not squeezed against the right
/// edge. p = 100 (the max) is placed half a decade right of the last nine and labelled "max".
/// y is a log scale labelled in ns/µs/ms/s. Points outside 0..=100 or with a latency that is
/// not positive (a log scale cannot show it) are left out.
pub fn latency_percentiles(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(p, ns)| (0.0..=100.0).contains(&p) && ns > 0.0 && ns.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts
        })
        .collect();
    let all = || curves.iter().flatten();
    if all().next().is_none() {
        return Err(format!("{}: no latency points to plot", path.display()));
    }

    let nines = |p: f64| -(1.0 - p / 100.0).log10();
    let finite_x = all().map(|&(p, _)| nines(p)).filter(|x| x.is_finite());
    // The epsilon keeps 99.9%, which comes out a hair above 3.0, from opening another decade.
    let decades = finite_x.fold(2.0f64, |m, x| m.max((x - 1e-6).ceil()));
    let has_max = all().any(|&(p, _)| !nines(p).is_finite());
    let right = if has_max { decades + 0.5 } else { decades };
    let to_x = |p: f64| {
        let x = nines(p);
        if x.is_finite() {
            x
        } else {
            right
        }
    };

    let mut x_ticks = vec![0.0, nines(50.0)];
    x_ticks.extend((1..=decades as i32).map(f64::from));
    if has_max {
        x_ticks.push(right);
    }
    let x_label = |x: &f64| {
        if has_max && (*x - right).abs() < 1e-9 {
            "max".to_string()
        } else {
            percentile_label(*x)
        }
    };

    let (lo, hi) = decade_bounds(
        all().map(|p| p.1).fold(f64::INFINITY, f64::min),
        all().map(|p| p.1).fold(0.0, f64::max),
    );
    let (y_bold, y_light) = log_ticks(lo, hi);
    let y = (lo..hi)
        .log_scale()
        .with_key_points(y_bold)
        .with_light_points(y_light);

    let legend: Vec<(String, Swatch)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), Swatch::Line(color(i))))
        .collect();
    render(path, title, &legend, |area| {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(Ticked::new(0.0..right, x_ticks), y)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency")
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v| fmt_ns(*v))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(err)?;
        for (i, pts) in curves.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|&(p, ns)| (to_x(p), ns)),
                    color(i).stroke_width(2),
                ))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// Throughput over time: x = seconds since the phase start, y = ops/s (each bucket's count
/// scaled to a second, drawn at the bucket's middle), one line per series. A series' snapshot
/// is a translucent band in its color between two dashed lines, named "<name> snapshot" in the
/// legend.
///
/// `log_y` puts y on a log scale so that 1.5M ops/s and 100k ops/s are both readable on one
/// chart; empty buckets (a stall) are then drawn on the bottom edge rather than dropped.
pub fn throughput_timeline(
    path: &Path,
    title: &str,
    series: &[Timeline],
    log_y: bool,
) -> Result<(), String> {
    if let Some(s) = series.iter().find(|s| s.bucket_ms == 0) {
        return Err(format!("{}: {} has bucket_ms = 0", path.display(), s.name));
    }
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let secs = s.bucket_ms as f64 / 1000.0;
            s.ops
                .iter()
                .enumerate()
                .map(|(i, &n)| ((i as f64 + 0.5) * secs, n as f64 / secs))
                .collect()
        })
        .collect();
    let end = series
        .iter()
        .map(|s| {
            let data_end = s.ops.len() as f64 * s.bucket_ms as f64 / 1000.0;
            s.snapshot.map_or(data_end, |(_, e)| data_end.max(e))
        })
        .fold(0.0, f64::max);
    if end <= 0.0 || !end.is_finite() {
        return Err(format!("{}: no throughput buckets to plot", path.display()));
    }
    let rates = || lines.iter().flatten().map(|p| p.1);
    let max_rate = rates().fold(0.0, f64::max);

    let mut legend = Vec::new();
    for (i, s) in series.iter().enumerate() {
        legend.push((s.name.clone(), Swatch::Line(color(i))));
        if s.snapshot.is_some() {
            legend.push((format!("{} snapshot", s.name), Swatch::Band(color(i))));
        }
    }
    render(path, title, &legend, |area| {
        if log_y {
            let min_rate = rates().filter(|&r| r > 0.0).fold(f64::INFINITY, f64::min);
            let (lo, hi) = if min_rate.is_finite() {
                decade_bounds(min_rate, max_rate)
            } else {
                (1.0, 10.0)
            };
            let (bold, light) = log_ticks(lo, hi);
            let y = (lo..hi)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light);
            timeline_chart(area, series, &lines, end, y, (lo, hi), "ops/s (log scale)")
        } else {
            // Headroom above the top line; at least 1 so an all-zero run still has a range.
            let hi = (max_rate * 1.05).max(1.0);
            let y: RangedCoordf64 = (0.0..hi).into();
            timeline_chart(area, series, &lines, end, y, (0.0, hi), "ops/s")
        }
    })
}

/// The body of `throughput_timeline`, generic over the y coordinate so that the linear and the
/// log scale share it. `y_span` is the drawn y range, which rates are clamped into.
fn timeline_chart<Y>(
    area: &DrawingArea<SVGBackend, Shift>,
    series: &[Timeline],
    lines: &[Vec<(f64, f64)>],
    end: f64,
    y: Y,
    (lo, hi): (f64, f64),
    y_desc: &str,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since phase start")
        .y_desc(y_desc)
        // One light line between ticks: plotters' default of up to ten crowds a 20 s run.
        .max_light_lines(1)
        .x_label_formatter(&|v| fmt_trim(*v, 2))
        .y_label_formatter(&|v| fmt_rate(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;

    // Bands first, so that every line is drawn over them.
    for (i, s) in series.iter().enumerate() {
        let Some((start, stop)) = s.snapshot else {
            continue;
        };
        let (start, stop) = (start.max(0.0), stop.min(end));
        if stop < start {
            continue;
        }
        let c = color(i);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(start, lo), (stop, hi)],
                c.mix(0.12).filled(),
            )))
            .map_err(err)?;
        for x in [start, stop] {
            chart
                .draw_series(DashedLineSeries::new(
                    [(x, lo), (x, hi)],
                    6,
                    4,
                    c.stroke_width(1),
                ))
                .map_err(err)?;
        }
    }
    for (i, pts) in lines.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(t, r)| (t, r.clamp(lo, hi))),
                color(i).stroke_width(2),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// A linear f64 axis with ticks exactly at `ticks` (the percentile axis needs 50%, 90%, ...).
/// plotters' `with_key_points` would do this, but on an f64 range it loses the value formatter
/// that `configure_mesh` requires.
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Ticked {
            linear: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only the labelled ticks get grid lines; no lighter lines between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

/// How a legend entry is marked: a line for a series, a shaded box for a snapshot band.
#[derive(Clone, Copy)]
enum Swatch {
    Line(RGBColor),
    Band(RGBColor),
}

/// Writes the frame shared by both charts: background, title, and a legend in a column right
/// of the plot (up to ten entries would cover the data if drawn inside it); `body` draws the
/// chart into the remaining area.
fn render(
    path: &Path,
    title: &str,
    legend: &[(String, Swatch)],
    body: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<(), String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err).map_err(at)?;
    let root = root.titled(title, (FONT, 22)).map_err(err).map_err(at)?;

    // Wide enough for the longest name at roughly 7.5 px a character at 14 px.
    let longest = legend.iter().map(|(n, _)| n.chars().count()).max();
    let width = (48 + longest.unwrap_or(0) as i32 * 15 / 2).clamp(120, 320);
    let (plot, key) = root.split_horizontally(SIZE.0 as i32 - width);
    body(&plot).map_err(at)?;

    let text = (FONT, 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let (top, row) = (20, 22);
    if !legend.is_empty() {
        key.draw(&Rectangle::new(
            [
                (0, top - 8),
                (width - 10, top + row * legend.len() as i32 - 6),
            ],
            BLACK.mix(0.4),
        ))
        .map_err(err)
        .map_err(at)?;
    }
    for (i, (name, swatch)) in legend.iter().enumerate() {
        let y = top + 4 + row * i as i32;
        match *swatch {
            Swatch::Line(c) => key.draw(&PathElement::new([(8, y), (32, y)], c.stroke_width(3))),
            Swatch::Band(c) => key
                .draw(&Rectangle::new(
                    [(8, y - 6), (32, y + 6)],
                    c.mix(0.25).filled(),
                ))
                .and_then(|_| key.draw(&Rectangle::new([(8, y - 6), (32, y + 6)], c))),
        }
        .map_err(err)
        .map_err(at)?;
        key.draw(&Text::new(name.as_str(), (40, y), text.clone()))
            .map_err(err)
            .map_err(at)?;
    }
    // Dropping the backend would write the file too, but would swallow an I/O error.
    root.present().map_err(err).map_err(at)
}

fn err(e: impl Display) -> String {
    e.to_string()
}

/// The smallest power-of-ten range holding `min..=max` (both positive).
fn decade_bounds(min: f64, max: f64) -> (f64, f64) {
    let lo = 10f64.powf(min.log10().floor());
    let hi = 10f64.powf(max.log10().ceil());
    (lo, if hi > lo { hi } else { lo * 10.0 })
}

/// Labelled and grid-only ticks for a log axis from `lo` to `hi` (powers of ten): labels at each
/// power of ten, and at 2× and 5× too when the axis spans only one or two decades, which would
/// otherwise carry two or three labels.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
    let few = b - a <= 2;
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for k in a..=b {
        let d = 10f64.powi(k);
        bold.push(d);
        if k == b {
            break;
        }
        for m in 2..=9 {
            let v = d * f64::from(m);
            if few && (m == 2 || m == 5) {
                bold.push(v);
            } else {
                light.push(v);
            }
        }
    }
    (bold, light)
}

/// The percentile at `x` = -log10(1 - p/100), with as many decimals as it has nines past 99:
/// 0 → "0%", 0.301 → "50%", 1 → "90%", 3 → "99.9%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x - 1e-6).ceil().max(2.0) as usize - 2;
    format!("{p:.decimals$}%")
}

/// Nanoseconds in the largest unit that keeps the number at 1 or more: "250 ns", "1.5 µs".
fn fmt_ns(ns: f64) -> String {
    fmt_scaled(ns, &[(1e9, " s"), (1e6, " ms"), (1e3, " µs"), (1.0, " ns")])
}

/// A rate with a k or M suffix: "0", "500", "100k", "1.5M".
fn fmt_rate(r: f64) -> String {
    fmt_scaled(r, &[(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")])
}

/// `v` in the first of `units` (largest first, the last one's scale 1) that keeps it at 1 or
/// more, with at most two decimals.
fn fmt_scaled(v: f64, units: &[(f64, &str)]) -> String {
    // A hair under the threshold still counts, for ticks computed as 10^k · m.
    let (scale, unit) = units
        .iter()
        .find(|&&(s, _)| v >= s * (1.0 - 1e-9))
        .or(units.last())
        .copied()
        .unwrap_or((1.0, ""));
    format!("{}{unit}", fmt_trim(v / scale, 2))
}

/// `v` with at most `decimals` decimals and no trailing zeros.
fn fmt_trim(v: f64, decimals: usize) -> String {
    let s = crate::util::trim_decimals(&format!("{v:.decimals$}")).to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 5] = ["millpond", "hashmap", "rocksdb", "forst", "baseline"];

    fn read(path: &Path) -> String {
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.len() > 2000, "suspiciously small SVG:\n{svg}");
        assert!(svg.starts_with("<svg"), "{svg}");
        svg
    }

    #[test]
    fn latency_chart_has_series_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        let ps: [f64; 10] = [
            0.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0,
        ];
        let series: Vec<Series> = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: name.to_string(),
                // Made-up curves from 300 ns up to tens of ms, steeper for later systems.
                points: ps
                    .iter()
                    .map(|&p| {
                        let tail = 1.0 / (1.0 - p / 100.0 + 1e-6);
                        (p, 300.0 * (i + 1) as f64 * tail.powf(0.5 + 0.1 * i as f64))
                    })
                    .collect(),
            })
            .collect();
        latency_percentiles(&path, "get latency, 1M keys", &series).unwrap();
        let svg = read(&path);
        for name in NAMES {
            assert!(svg.contains(&format!(">\n{name}\n</text>")), "no {name}");
        }
        for label in [
            "get latency, 1M keys",
            "50%",
            "99.9%",
            "99.999%",
            "max",
            "µs",
            "ms",
        ] {
            assert!(svg.contains(label), "no {label}");
        }
        assert!(svg.contains("percentile") && svg.contains("latency"));
    }

    fn timelines() -> Vec<Timeline> {
        // 1.5M ops/s and 100k ops/s in 100 ms buckets over 20 s, each slowing during its
        // snapshot (millpond's to zero for a moment, to cover empty buckets on a log scale).
        let run = |name: &str, per_bucket: u64, snap: (f64, f64)| Timeline {
            name: name.into(),
            bucket_ms: 100,
            ops: (0..200)
                .map(|i| {
                    let t = i as f64 / 10.0;
                    if (snap.0..snap.1).contains(&t) {
                        if i % 7 == 0 {
                            0
                        } else {
                            per_bucket / 2
                        }
                    } else {
                        per_bucket + (i % 5) * per_bucket / 50
                    }
                })
                .collect(),
            snapshot: Some(snap),
        };
        vec![
            run("millpond", 150_000, (5.0, 7.5)),
            run("rocksdb", 10_000, (9.0, 14.0)),
            Timeline {
                name: "baseline".into(),
                bucket_ms: 250,
                ops: vec![500_000; 80],
                snapshot: None,
            },
        ]
    }

    #[test]
    fn timeline_chart_has_series_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        for log_y in [false, true] {
            let path = dir.path().join(format!("timeline-{log_y}.svg"));
            throughput_timeline(&path, "rmw throughput", &timelines(), log_y).unwrap();
            let svg = read(&path);
            for label in [
                "rmw throughput",
                "millpond",
                "rocksdb",
                "baseline",
                "millpond snapshot",
                "rocksdb snapshot",
                "seconds since phase start",
                "ops/s",
            ] {
                assert!(svg.contains(label), "log_y={log_y}: no {label}");
            }
            assert!(!svg.contains("baseline snapshot"));
            if log_y {
                assert!(svg.contains(">\n100k\n</text>") && svg.contains(">\n1M\n</text>"));
            }
        }
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.svg");
        let empty = Series {
            name: "a".into(),
            points: vec![(50.0, 0.0), (101.0, 5.0)],
        };
        assert!(latency_percentiles(&path, "t", &[empty]).is_err());
        let zero_bucket = Timeline {
            name: "a".into(),
            bucket_ms: 0,
            ops: vec![1],
            snapshot: None,
        };
        assert!(throughput_timeline(&path, "t", &[zero_bucket], false).is_err());
        assert!(throughput_timeline(&path, "t", &[], true).is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2f64.log10()), "50%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert_eq!(fmt_ns(250.0), "250 ns");
        assert_eq!(fmt_ns(1e3), "1 µs");
        assert_eq!(fmt_ns(2.5e7), "25 ms");
        assert_eq!(fmt_rate(0.0), "0");
        assert_eq!(fmt_rate(1.5e6), "1.5M");
        assert_eq!(fmt_rate(100_000.0), "100k");
        assert_eq!(log_ticks(1e3, 1e4).0, vec![1e3, 2e3, 5e3, 1e4]);
        assert_eq!(log_ticks(1e2, 1e6).0, vec![1e2, 1e3, 1e4, 1e5, 1e6]);
    }
}
