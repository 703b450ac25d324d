//! PNG figures for the reproduced experiments, rendered without any system font library.
//!
//! A fresh machine may have no fonts and no fontconfig, and plotters' own text support
//! (captions, mesh labels) needs one of its font features, failing at run time without
//! them. So this module uses plotters only as a pixel canvas — a [`BitMapBackend`]
//! drawing area that receives filled rectangles and alpha-blended pixels, then encodes
//! the PNG — and draws everything else itself:
//!
//! * text comes from the embedded public-domain 8×8 bitmap font of the `font8x8` crate
//!   (Basic Latin, Latin-1 and Greek, so labels such as `α(t)` or `σ` work), spaced
//!   proportionally, each glyph pixel drawn as a 2×2 filled square;
//! * axes, "nice" tick values (1, 2 or 5 × 10^k), tick labels (`-8`, `0.25`, `1e-3`),
//!   the title, the rotated y-axis label and the legend are laid out here; the legend
//!   goes into the plot-area corner that hides the least content, and when every corner
//!   is busy a fitted y range is raised to leave a free band for it;
//! * curves are rasterised with an anti-aliased distance-based stroker that is clipped to
//!   the plot area, so translucent paths blend once per path and never bleed into the
//!   margins.
//!
//! Three figure kinds, all 900×600 on a white background:
//!
//! * [`density_figure`]: a density-normalised histogram of samples (light grey bars)
//!   with density curves on top, e.g. a learned 1-D density against the data and the
//!   true density;
//! * [`line_figure`]: several labelled curves, e.g. α(t), β(t), σ(t) or training curves;
//! * [`paths_figure`]: many thin translucent sample paths x(t), e.g. 100 paths from the
//!   prior at t = 0 to the data at t = 1.
//!
//! Non-finite points (NaN, ±inf) are skipped: a curve or path is broken into separate
//! pieces at such a point instead of being joined across it. Inputs without any finite
//! point are an error, as are empty ranges and a path that does not end in `.png`.
//! Missing parent directories of the output path are created.

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use font8x8::{UnicodeFonts, BASIC_FONTS, GREEK_FONTS, LATIN_FONTS};
use plotters::coord::Shift;
use plotters::prelude::{
    BitMapBackend, Color, DrawingArea, IntoDrawingArea, RGBAColor, RGBColor, Rectangle,
};

/// Width of every figure in pixels.
pub const WIDTH: u32 = 900;
/// Height of every figure in pixels.
pub const HEIGHT: u32 = 600;

/// One labelled curve of a [`line_figure`] or [`density_figure`].
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Legend text; an empty label leaves the curve out of the legend.
    pub label: String,
    /// Points `(x, y)` joined in the given order; non-finite points break the line.
    pub points: Vec<(f64, f64)>,
    /// Line colour as RGB.
    pub color: (u8, u8, u8),
}

impl Curve {
    /// A curve with the given legend label, points and RGB colour.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Self {
        Self {
            label: label.into(),
            points,
            color,
        }
    }
}

/// Title, axis labels and optional axis ranges shared by all figure kinds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figure {
    /// Title drawn centred above the plot area.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label left of the y axis (drawn rotated, reading bottom to top).
    pub y_label: String,
    /// Visible x range `(min, max)`; `None` fits the finite data with a small margin.
    pub x_range: Option<(f64, f64)>,
    /// Visible y range `(min, max)`; `None` fits the finite data with a small margin
    /// (from 0 for a [`density_figure`]), raised where needed to make room for the
    /// legend.
    pub y_range: Option<(f64, f64)>,
}

impl Figure {
    /// A figure with the given title and axis labels and ranges fitted to the data.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_range: None,
            y_range: None,
        }
    }

    /// The same figure with a fixed x range.
    pub fn with_x_range(mut self, min: f64, max: f64) -> Self {
        self.x_range = Some((min, max));
        self
    }

    /// The same figure with a fixed y range.
    pub fn with_y_range(mut self, min: f64, max: f64) -> Self {
        self.y_range = Some((min, max));
        self
    }
}

/// Histogram of `samples` (density-normalised, `bins` equal bins over x_range) in light
/// grey bars, with curves on top and a legend.
///
/// The bins cover `fig.x_range` when given, else the range of the finite samples. Bar
/// heights are `count / (n * bin_width)` with `n` the number of finite samples, so that
/// the histogram is comparable with a density curve even when some samples fall outside
/// the visible range (those are simply not shown). A fitted y range starts at 0.
///
/// Errors if `samples` has no finite value, `bins` is 0, a given range is empty or not
/// finite, or the PNG cannot be written.
pub fn density_figure(
    path: &Path,
    fig: &Figure,
    samples: &[f64],
    bins: usize,
    curves: &[Curve],
) -> Result<()> {
    ensure!(bins > 0, "density_figure: `bins` must be at least 1");
    let finite: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    ensure!(
        !finite.is_empty(),
        "density_figure: no finite samples to histogram ({} given)",
        samples.len()
    );
    let fixed_x = checked_range(fig.x_range, "x_range")?;
    let fixed_y = checked_range(fig.y_range, "y_range")?;

    // Histogram over the given x range, else over the sample extent.
    let (lo, hi) = match fixed_x {
        Some(r) => r,
        None => {
            let (mut lo, mut hi) = extent(finite.iter().copied()).expect("non-empty");
            if lo == hi {
                lo -= 0.5;
                hi += 0.5;
            }
            (lo, hi)
        }
    };
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &v in &finite {
        if v >= lo && v <= hi {
            let k = (((v - lo) / width) as usize).min(bins - 1);
            counts[k] += 1;
        }
    }
    let norm = 1.0 / (finite.len() as f64 * width);
    let bars: Vec<(f64, f64, f64)> = counts
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let left = lo + k as f64 * width;
            (left, left + width, c as f64 * norm)
        })
        .collect();

    let x_range = match fixed_x {
        Some(r) => r,
        None => {
            let xs = finite.iter().copied().chain(
                curves
                    .iter()
                    .flat_map(|c| finite_points(&c.points).map(|p| p.0)),
            );
            let (a, b) = extent(xs).expect("non-empty");
            pad_range(a.min(lo), b.max(hi), 0.03)
        }
    };
    let y_range = match fixed_y {
        Some(r) => r,
        None => {
            let ys = bars.iter().map(|b| b.2).chain(
                curves
                    .iter()
                    .flat_map(|c| finite_points(&c.points))
                    .filter(|p| p.0 >= x_range.0 && p.0 <= x_range.1)
                    .map(|p| p.1),
            );
            let (a, b) = extent(ys).unwrap_or((0.0, 1.0));
            let (a, b) = (a.min(0.0), b.max(0.0));
            if a == b {
                (0.0, 1.0)
            } else {
                let pad = 0.06 * (b - a);
                (if a < 0.0 { a - pad } else { 0.0 }, b + pad)
            }
        }
    };

    let mut legend = vec![LegendEntry {
        label: "histogram".to_string(),
        key: LegendKey::Bar,
        color: BAR_FILL,
    }];
    legend.extend(curve_legend(curves));
    render(
        path,
        fig,
        x_range,
        y_range,
        fixed_y.is_none(),
        &Content::Density {
            bars: &bars,
            curves,
        },
        &legend,
    )
}

/// Several curves (e.g. α, β, σ over t; training curves), with a legend.
///
/// Curves are drawn 2.5 px wide in the given order; labelled curves get a legend entry.
/// Errors if `curves` is empty or has no finite point, a given range is empty or not
/// finite, or the PNG cannot be written.
pub fn line_figure(path: &Path, fig: &Figure, curves: &[Curve]) -> Result<()> {
    ensure!(!curves.is_empty(), "line_figure: no curves given");
    let fixed_x = checked_range(fig.x_range, "x_range")?;
    let fixed_y = checked_range(fig.y_range, "y_range")?;
    let all = || curves.iter().flat_map(|c| finite_points(&c.points));
    ensure!(
        all().next().is_some(),
        "line_figure: none of the {} curves has a finite point",
        curves.len()
    );
    let (x_range, y_range) = fit_ranges(all, fixed_x, fixed_y);
    render(
        path,
        fig,
        x_range,
        y_range,
        fixed_y.is_none(),
        &Content::Lines { curves },
        &curve_legend(curves),
    )
}

/// Many thin paths (t, x) in one translucent colour, e.g. 100 sample paths from prior to
/// data.
///
/// The opacity of a single path falls with the number of paths, so that regions crossed
/// by many paths come out darker; overlapping segments of one path do not darken it.
/// Errors if `paths` is empty or has no finite point, a given range is empty or not
/// finite, or the PNG cannot be written.
pub fn paths_figure(
    path: &Path,
    fig: &Figure,
    paths: &[Vec<(f64, f64)>],
    color: (u8, u8, u8),
) -> Result<()> {
    ensure!(!paths.is_empty(), "paths_figure: no paths given");
    let fixed_x = checked_range(fig.x_range, "x_range")?;
    let fixed_y = checked_range(fig.y_range, "y_range")?;
    let all = || paths.iter().flat_map(|p| finite_points(p));
    ensure!(
        all().next().is_some(),
        "paths_figure: none of the {} paths has a finite point",
        paths.len()
    );
    let (x_range, y_range) = fit_ranges(all, fixed_x, fixed_y);
    render(
        path,
        fig,
        x_range,
        y_range,
        fixed_y.is_none(),
        &Content::Paths { paths, color },
        &[],
    )
}

// ---------------------------------------------------------------------------------------
// Ranges and ticks
// ---------------------------------------------------------------------------------------

/// Validates an optional user range.
fn checked_range(range: Option<(f64, f64)>, name: &str) -> Result<Option<(f64, f64)>> {
    if let Some((a, b)) = range {
        ensure!(
            a.is_finite() && b.is_finite() && a < b,
            "figure {name} must be finite with min < max, got ({a}, {b})"
        );
    }
    Ok(range)
}

/// Finite points of a polyline.
fn finite_points(points: &[(f64, f64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
}

/// Minimum and maximum of the finite values, `None` when there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((a, b)) => Some((a.min(v), b.max(v))),
        })
}

/// `[lo, hi]` widened by `frac` of its span on each side; a single value gets a window
/// around it.
fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi > lo {
        let pad = frac * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        let pad = if lo != 0.0 { 0.1 * lo.abs() } else { 1.0 };
        (lo - pad, hi + pad)
    }
}

/// Axis ranges for line-like content: the fixed ones, else the data extent plus 2 % (x)
/// or 5 % (y). The fitted y range only looks at points inside the x range.
fn fit_ranges<I: Iterator<Item = (f64, f64)>>(
    all: impl Fn() -> I,
    fixed_x: Option<(f64, f64)>,
    fixed_y: Option<(f64, f64)>,
) -> ((f64, f64), (f64, f64)) {
    let x_range = fixed_x.unwrap_or_else(|| {
        let (a, b) = extent(all().map(|p| p.0)).unwrap_or((0.0, 1.0));
        pad_range(a, b, 0.02)
    });
    let y_range = fixed_y.unwrap_or_else(|| {
        let ys = all()
            .filter(|p| p.0 >= x_range.0 && p.0 <= x_range.1)
            .map(|p| p.1);
        let (a, b) = extent(ys).unwrap_or((0.0, 1.0));
        pad_range(a, b, 0.05)
    });
    (x_range, y_range)
}

/// The smallest of 1, 2, 5 × 10^k that is at least `raw` (> 0).
fn nice_step(raw: f64) -> f64 {
    let e = raw.log10().floor();
    let base = 10f64.powf(e);
    let f = raw / base;
    let m = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * base
}

/// The next larger nice step after `step`.
fn next_step(step: f64) -> f64 {
    nice_step(step * 1.5)
}

/// Multiples of `step` inside `[lo, hi]`, exact zeros where the value is 0.
fn tick_values(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil();
    let last = (hi / step + 1e-9).floor();
    if !(first.is_finite() && last.is_finite()) || last - first > 1000.0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut k = first;
    while k <= last {
        out.push(if k == 0.0 { 0.0 } else { k * step });
        k += 1.0;
    }
    out
}

/// Decimal exponent of a nice step (exact for 1, 2, 5 × 10^k despite rounding).
fn step_exponent(step: f64) -> i32 {
    (step.log10() + 1e-9).floor() as i32
}

/// Tick labels for values on a grid of `step`: plain decimals (`-8`, `0.25`) or, when
/// shorter, scientific notation (`1e-3`, `2.5e5`).
fn tick_labels(values: &[f64], step: f64) -> Vec<String> {
    let k = step_exponent(step);
    // Fewest decimals that show every value exactly (more than the step's exponent
    // suggests when the step is not 1, 2 or 5 × 10^k, e.g. 0.25).
    let exact = |d: usize| {
        values.iter().all(|&v| {
            let shown: f64 = format!("{v:.d$}").parse().unwrap_or(f64::NAN);
            (shown - v).abs() <= 1e-6 * step
        })
    };
    let first = (-k).max(0) as usize;
    let decimals = (first..first + 3).find(|&d| exact(d)).unwrap_or(first + 3);
    let plain: Vec<String> = values
        .iter()
        .map(|&v| {
            let s = format!("{v:.decimals$}");
            // "-0.00" can only come from values that round to zero.
            if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
                s[1..].to_string()
            } else {
                s
            }
        })
        .collect();
    let sci: Vec<String> = values.iter().map(|&v| sci_label(v, k)).collect();
    let longest = |ls: &[String]| ls.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    if longest(&sci) < longest(&plain) {
        sci
    } else {
        plain
    }
}

/// `v` as `m e E` with as many mantissa digits as a grid of step `10^k` needs (trailing
/// zeros trimmed).
fn sci_label(v: f64, k: i32) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let mut e = (v.abs().log10() + 1e-9).floor() as i32;
    let digits = (e - k + 1).max(0) as usize;
    let mut m = v / 10f64.powi(e);
    let mut s = format!("{m:.digits$}");
    if s.trim_start_matches('-').starts_with("10") {
        e += 1;
        m /= 10.0;
        s = format!("{m:.digits$}");
    }
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}e{e}")
}

/// Ticks for an axis `lo..hi` drawn over `length_px` pixels: a nice step giving roughly
/// one tick per `target_px`, widened until neighbouring labels keep `min_gap_px` apart
/// (measured along the axis with `label_extent`).
fn choose_ticks(
    lo: f64,
    hi: f64,
    length_px: f64,
    target_px: f64,
    min_gap_px: f64,
    label_extent: impl Fn(&str) -> f64,
) -> Vec<(f64, String)> {
    let span = hi - lo;
    let wanted = (length_px / target_px).max(2.0);
    let mut step = nice_step(span / wanted);
    for _ in 0..60 {
        let values = tick_values(lo, hi, step);
        let labels = tick_labels(&values, step);
        let widest = labels.iter().map(|l| label_extent(l)).fold(0.0, f64::max);
        let spacing = step / span * length_px;
        if spacing >= widest + min_gap_px || values.len() <= 2 {
            return values.into_iter().zip(labels).collect();
        }
        step = next_step(step);
    }
    Vec::new()
}

// ---------------------------------------------------------------------------------------
// Bitmap text
// ---------------------------------------------------------------------------------------

/// Pixel scale of the 8×8 font (each glyph pixel becomes a SCALE×SCALE square).
const SCALE: i32 = 2;
/// Height (and nominal width) of one character in pixels; spacing is proportional.
const CHAR_PX: i32 = 8 * SCALE;

/// The 8×8 glyph of `c` (rows top to bottom, bit 0 = leftmost column); unknown
/// characters become `?`.
fn glyph(c: char) -> [u8; 8] {
    let c = match c {
        '\u{2212}' | '\u{2013}' | '\u{2014}' => '-',
        '\u{2018}' | '\u{2019}' => '\'',
        '\u{201C}' | '\u{201D}' => '"',
        c => c,
    };
    BASIC_FONTS
        .get(c)
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Glyphs of `text` with their horizontal offsets, and the total width, in font columns.
///
/// Spacing is proportional: each glyph is trimmed to its inked columns and followed by a
/// one-column gap; blanks advance four columns.
fn layout_glyphs(text: &str) -> (Vec<(i32, [u8; 8])>, i32) {
    let mut glyphs = Vec::new();
    let mut pen = 0;
    for ch in text.chars() {
        let g = glyph(ch);
        let ink = g.iter().fold(0u8, |acc, &row| acc | row);
        if ink == 0 {
            pen += 4;
            continue;
        }
        let first = ink.trailing_zeros() as i32;
        let last = 7 - ink.leading_zeros() as i32;
        glyphs.push((pen - first, g));
        pen += last - first + 2;
    }
    (glyphs, (pen - 1).max(0))
}

/// Width of `text` in pixels at the standard scale.
fn text_width(text: &str) -> i32 {
    layout_glyphs(text).1 * SCALE
}

/// Text direction.
#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// Left to right.
    Horizontal,
    /// Rotated 90° counter-clockwise: reads bottom to top.
    Up,
}

// ---------------------------------------------------------------------------------------
// Canvas: plotters drawing area plus the few primitives used here
// ---------------------------------------------------------------------------------------

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const TEXT: (u8, u8, u8) = (25, 25, 25);
const AXIS: (u8, u8, u8) = (40, 40, 40);
const GRID: (u8, u8, u8) = (230, 230, 230);
const BAR_FILL: (u8, u8, u8) = (212, 212, 212);
const BAR_EDGE: (u8, u8, u8) = (168, 168, 168);

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Converts a plotters drawing error into an `anyhow` error.
fn draw_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

struct Canvas<'a> {
    area: Area<'a>,
}

impl Canvas<'_> {
    /// Fills the pixels `[x0, x1) × [y0, y1)`.
    fn fill(&self, x0: i32, y0: i32, x1: i32, y1: i32, color: (u8, u8, u8)) -> Result<()> {
        if x1 <= x0 || y1 <= y0 {
            return Ok(());
        }
        self.area
            .draw(&Rectangle::new([(x0, y0), (x1, y1)], rgb(color).filled()))
            .map_err(draw_err)
    }

    /// Blends `color` with opacity `alpha` over the pixels `[x0, x1) × [y0, y1)`.
    fn blend(
        &self,
        x0: i32,
        y0: i32,
        x1: i32,
        y1: i32,
        color: (u8, u8, u8),
        alpha: f64,
    ) -> Result<()> {
        if x1 <= x0 || y1 <= y0 {
            return Ok(());
        }
        let c = RGBAColor(color.0, color.1, color.2, alpha);
        self.area
            .draw(&Rectangle::new([(x0, y0), (x1, y1)], c.filled()))
            .map_err(draw_err)
    }

    /// Blends `color` with opacity `alpha` over one pixel.
    fn pixel(&self, x: i32, y: i32, color: (u8, u8, u8), alpha: f64) -> Result<()> {
        self.area
            .draw_pixel((x, y), &RGBAColor(color.0, color.1, color.2, alpha))
            .map_err(draw_err)
    }

    /// Draws `text` with its top-left corner (of the unrotated or rotated box) at `(x, y)`.
    fn text(
        &self,
        text: &str,
        x: i32,
        y: i32,
        dir: Dir,
        color: (u8, u8, u8),
        bold: bool,
    ) -> Result<()> {
        let (glyphs, len) = layout_glyphs(text);
        for (offset, rows) in glyphs {
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..8 {
                    if bits & (1 << c) == 0 {
                        continue;
                    }
                    let u = offset + c; // along the text
                    let v = r as i32; // across the text, top to bottom
                    let (px, py) = match dir {
                        Dir::Horizontal => (x + u * SCALE, y + v * SCALE),
                        Dir::Up => (x + v * SCALE, y + (len - 1 - u) * SCALE),
                    };
                    let (w, h) = match (dir, bold) {
                        (Dir::Horizontal, true) => (SCALE + 1, SCALE),
                        (Dir::Up, true) => (SCALE, SCALE + 1),
                        _ => (SCALE, SCALE),
                    };
                    let py = if dir == Dir::Up && bold { py - 1 } else { py };
                    self.fill(px, py, px + w, py + h, color)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Anti-aliased stroking, clipped to the plot area
// ---------------------------------------------------------------------------------------

/// Coverage raster over the plot area for one polyline at a time.
///
/// Each stroke is accumulated as the maximum coverage per pixel within the current
/// layer (so overlapping segments of one path do not darken it); `touched` lists the
/// pixels of the current layer.
struct Raster {
    w: usize,
    h: usize,
    cov: Vec<f32>,
    stamp: Vec<u32>,
    layer: u32,
    touched: Vec<usize>,
}

impl Raster {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            cov: vec![0.0; w * h],
            stamp: vec![0; w * h],
            layer: 0,
            touched: Vec::new(),
        }
    }

    /// Starts a new layer.
    fn begin(&mut self) {
        self.layer += 1;
        self.touched.clear();
    }

    /// Strokes the segment `a`–`b` (local pixel coordinates, pixel centres at i + 0.5)
    /// with the given width.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), width: f64) {
        let r = width / 2.0 + 0.5;
        let m = r + 1.0;
        let Some((a, b)) = clip_segment(a, b, (-m, -m), (self.w as f64 + m, self.h as f64 + m))
        else {
            return;
        };
        let x0 = (a.0.min(b.0) - r).floor().max(0.0) as usize;
        let x1 = ((a.0.max(b.0) + r).ceil().max(0.0) as usize).min(self.w);
        let y0 = (a.1.min(b.1) - r).floor().max(0.0) as usize;
        let y1 = ((a.1.max(b.1) + r).ceil().max(0.0) as usize).min(self.h);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for py in y0..y1 {
            for px in x0..x1 {
                let (cx, cy) = (px as f64 + 0.5, py as f64 + 0.5);
                let t = if len2 > 0.0 {
                    (((cx - a.0) * dx + (cy - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (cx - (a.0 + t * dx), cy - (a.1 + t * dy));
                let d = (ex * ex + ey * ey).sqrt();
                let c = (r - d).clamp(0.0, 1.0) as f32;
                if c <= 0.0 {
                    continue;
                }
                let i = py * self.w + px;
                if self.stamp[i] != self.layer {
                    self.stamp[i] = self.layer;
                    self.cov[i] = 0.0;
                    self.touched.push(i);
                }
                if c > self.cov[i] {
                    self.cov[i] = c;
                }
            }
        }
    }
}

/// Liang–Barsky clipping of a segment to the box `lo`–`hi`.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    lo: (f64, f64),
    hi: (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let mut t0 = 0.0f64;
    let mut t1 = 1.0f64;
    for (p, q) in [
        (-dx, a.0 - lo.0),
        (dx, hi.0 - a.0),
        (-dy, a.1 - lo.1),
        (dy, hi.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 || !t0.is_finite() || !t1.is_finite() {
        return None;
    }
    Some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

// ---------------------------------------------------------------------------------------
// Layout and rendering
// ---------------------------------------------------------------------------------------

/// Space above the plot area (title).
const TOP: i32 = 46;
/// Space below the plot area (ticks, tick labels, x label).
const BOTTOM: i32 = 64;
/// Space right of the plot area.
const RIGHT: i32 = 30;
/// Length of the outward tick marks.
const TICK: i32 = 5;
/// Stroke width of labelled curves.
const CURVE_WIDTH: f64 = 2.5;
/// Stroke width of sample paths.
const PATH_WIDTH: f64 = 1.3;

/// What goes inside the plot area.
enum Content<'c> {
    Density {
        bars: &'c [(f64, f64, f64)],
        curves: &'c [Curve],
    },
    Lines {
        curves: &'c [Curve],
    },
    Paths {
        paths: &'c [Vec<(f64, f64)>],
        color: (u8, u8, u8),
    },
}

enum LegendKey {
    Line,
    Bar,
}

struct LegendEntry {
    label: String,
    key: LegendKey,
    color: (u8, u8, u8),
}

fn curve_legend(curves: &[Curve]) -> Vec<LegendEntry> {
    curves
        .iter()
        .filter(|c| !c.label.is_empty())
        .map(|c| LegendEntry {
            label: c.label.clone(),
            key: LegendKey::Line,
            color: c.color,
        })
        .collect()
}

/// Plot-area pixel rectangle `[px0, px1) × [py0, py1)` and the data ranges it shows.
struct Frame {
    px0: i32,
    py0: i32,
    px1: i32,
    py1: i32,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn w(&self) -> usize {
        (self.px1 - self.px0) as usize
    }

    fn h(&self) -> usize {
        (self.py1 - self.py0) as usize
    }

    /// Data → local plot-area pixel coordinates (may lie outside the area).
    fn local(&self, p: (f64, f64)) -> (f64, f64) {
        let sx = (p.0 - self.x.0) / (self.x.1 - self.x.0) * self.w() as f64;
        let sy = (self.y.1 - p.1) / (self.y.1 - self.y.0) * self.h() as f64;
        (sx, sy)
    }

    /// Column of an x tick, in image pixels.
    fn x_col(&self, v: f64) -> i32 {
        let c = self.px0 + self.local((v, self.y.0)).0.floor() as i32;
        c.clamp(self.px0, self.px1 - 1)
    }

    /// Row of a y tick, in image pixels.
    fn y_row(&self, v: f64) -> i32 {
        let r = self.py0 + self.local((self.x.0, v)).1.floor() as i32;
        r.clamp(self.py0, self.py1 - 1)
    }
}

/// Strokes a polyline into the current raster layer, breaking at non-finite points;
/// isolated finite points become dots.
fn stroke_polyline(raster: &mut Raster, frame: &Frame, points: &[(f64, f64)], width: f64) {
    let mut prev: Option<(f64, f64)> = None;
    let mut drew_from_prev = false;
    for &p in points {
        let q = if p.0.is_finite() && p.1.is_finite() {
            let q = frame.local(p);
            (q.0.is_finite() && q.1.is_finite()).then_some(q)
        } else {
            None
        };
        match (prev, q) {
            (Some(a), Some(b)) => {
                raster.segment(a, b, width);
                drew_from_prev = true;
            }
            (Some(a), None) if !drew_from_prev => raster.segment(a, a, width),
            _ => {}
        }
        if q.is_none() || prev.is_none() {
            drew_from_prev = false;
        }
        prev = q;
    }
    if let (Some(a), false) = (prev, drew_from_prev) {
        raster.segment(a, a, width);
    }
}

/// Ticks and plot rectangle for the given data ranges.
struct Layout {
    frame: Frame,
    x_ticks: Vec<(f64, String)>,
    y_ticks: Vec<(f64, String)>,
}

/// Lays out the plot area: y ticks first (their labels set the left margin), then x
/// ticks for the remaining width.
fn layout(fig: &Figure, x: (f64, f64), y: (f64, f64)) -> Result<Layout> {
    let (img_w, img_h) = (WIDTH as i32, HEIGHT as i32);
    let (py0, py1) = (TOP, img_h - BOTTOM);
    let y_ticks = choose_ticks(y.0, y.1, (py1 - py0) as f64, 45.0, 10.0, |_| CHAR_PX as f64);
    let y_label_w = y_ticks
        .iter()
        .map(|(_, l)| text_width(l))
        .max()
        .unwrap_or(0);
    let y_title_w = if fig.y_label.is_empty() {
        0
    } else {
        CHAR_PX + 12
    };
    let px0 = 10 + y_title_w + y_label_w + 6 + TICK;
    let px1 = img_w - RIGHT;
    ensure!(
        px1 - px0 >= 100,
        "y tick labels too wide to leave room for the plot"
    );
    let x_ticks = choose_ticks(
        x.0,
        x.1,
        (px1 - px0) as f64,
        90.0,
        4.0 * SCALE as f64,
        |l| text_width(l) as f64,
    );
    Ok(Layout {
        frame: Frame {
            px0,
            py0,
            px1,
            py1,
            x,
            y,
        },
        x_ticks,
        y_ticks,
    })
}

/// Lays out and renders a complete figure. `y_fitted` says that the y range came from
/// the data and may be raised to make room for the legend above the content.
fn render(
    path: &Path,
    fig: &Figure,
    x: (f64, f64),
    y: (f64, f64),
    y_fitted: bool,
    content: &Content<'_>,
    legend: &[LegendEntry],
) -> Result<()> {
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    ensure!(is_png, "figure path {} must end in .png", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }

    let mut lay = layout(fig, x, y)?;
    // When every corner of the plot area is busy, raise a fitted y range so that the
    // legend sits in a free band above the content.
    if y_fitted && !legend.is_empty() {
        let occupied = draw_content(None, &lay.frame, content)?;
        let box_ = LegendBox::new(&lay.frame, legend);
        let (_, cost) = box_.corner(&lay.frame, &occupied);
        let band = (LEGEND_INSET + box_.h + 6) as f64 / lay.frame.h() as f64;
        if cost * 100 > (box_.w * box_.h) as usize && band <= 0.4 {
            lay = layout(fig, x, (y.0, y.0 + (y.1 - y.0) / (1.0 - band)))?;
        }
    }
    let Layout {
        frame,
        x_ticks,
        y_ticks,
    } = lay;
    let Frame {
        px0, py0, px1, py1, ..
    } = frame;
    let (img_w, img_h) = (WIDTH as i32, HEIGHT as i32);

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&rgb((255, 255, 255))).map_err(draw_err)?;
    let canvas = Canvas { area: root };

    // Grid, then the content (remembering which plot pixels it covers).
    for (v, _) in &x_ticks {
        let c = frame.x_col(*v);
        canvas.fill(c, py0, c + 1, py1, GRID)?;
    }
    for (v, _) in &y_ticks {
        let r = frame.y_row(*v);
        canvas.fill(px0, r, px1, r + 1, GRID)?;
    }
    let occupied = draw_content(Some(&canvas), &frame, content)?;

    // Frame, ticks and tick labels.
    canvas.fill(px0 - 1, py0 - 1, px1 + 1, py0, AXIS)?;
    canvas.fill(px0 - 1, py1, px1 + 1, py1 + 1, AXIS)?;
    canvas.fill(px0 - 1, py0 - 1, px0, py1 + 1, AXIS)?;
    canvas.fill(px1, py0 - 1, px1 + 1, py1 + 1, AXIS)?;
    for (v, label) in &x_ticks {
        let c = frame.x_col(*v);
        canvas.fill(c, py1 + 1, c + 1, py1 + 1 + TICK, AXIS)?;
        let lw = text_width(label);
        let lx = (c - lw / 2).clamp(2, img_w - lw - 2);
        canvas.text(label, lx, py1 + TICK + 7, Dir::Horizontal, TEXT, false)?;
    }
    for (v, label) in &y_ticks {
        let r = frame.y_row(*v);
        canvas.fill(px0 - 1 - TICK, r, px0 - 1, r + 1, AXIS)?;
        let lw = text_width(label);
        let ly = (r - CHAR_PX / 2 + 1).clamp(2, img_h - CHAR_PX - 2);
        let lx = px0 - 1 - TICK - 6 - lw;
        canvas.text(label, lx, ly, Dir::Horizontal, TEXT, false)?;
    }

    // Axis labels and title, centred on the plot area but kept inside the image.
    let centre_x = (px0 + px1) / 2;
    let centre_y = (py0 + py1) / 2;
    if !fig.x_label.is_empty() {
        let label = fit_text(&fig.x_label, img_w - 4);
        let lw = text_width(&label);
        let lx = (centre_x - lw / 2).clamp(2, (img_w - lw - 2).max(2));
        let ly = img_h - CHAR_PX - 10;
        canvas.text(&label, lx, ly, Dir::Horizontal, TEXT, false)?;
    }
    if !fig.y_label.is_empty() {
        let label = fit_text(&fig.y_label, img_h - 4);
        let lh = text_width(&label);
        let ly = (centre_y - lh / 2).clamp(2, (img_h - lh - 2).max(2));
        canvas.text(&label, 10, ly, Dir::Up, TEXT, false)?;
    }
    if !fig.title.is_empty() {
        let title = fit_text(&fig.title, img_w - 8);
        let tw = text_width(&title) + 1;
        let tx = (centre_x - tw / 2).clamp(4, (img_w - tw - 4).max(4));
        canvas.text(&title, tx, 14, Dir::Horizontal, TEXT, true)?;
    }

    if !legend.is_empty() {
        let box_ = LegendBox::new(&frame, legend);
        let (corner, _) = box_.corner(&frame, &occupied);
        box_.draw(&canvas, corner, legend)?;
    }

    canvas
        .area
        .present()
        .map_err(draw_err)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `text` shortened with "..." to fit `max_px` at the standard scale.
fn fit_text(text: &str, max_px: i32) -> String {
    if text_width(text) <= max_px {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let s: String = chars.iter().chain(['.'; 3].iter()).collect();
        if text_width(&s) <= max_px {
            return s;
        }
    }
    "...".to_string()
}

/// Draws the plot-area content onto `canvas` (or only measures it when `None`) and
/// returns which plot-area pixels it visibly covers, row-major.
fn draw_content(
    canvas: Option<&Canvas<'_>>,
    frame: &Frame,
    content: &Content<'_>,
) -> Result<Vec<bool>> {
    let (w, h) = (frame.w(), frame.h());
    let mut occupied = vec![false; w * h];
    let mut raster = Raster::new(w, h);
    match content {
        Content::Density { bars, curves } => {
            draw_bars(canvas, frame, bars, &mut occupied)?;
            draw_curves(canvas, frame, curves, &mut raster, &mut occupied)?;
        }
        Content::Lines { curves } => {
            draw_curves(canvas, frame, curves, &mut raster, &mut occupied)?;
        }
        Content::Paths { paths, color } => {
            draw_paths(canvas, frame, paths, *color, &mut raster, &mut occupied)?;
        }
    }
    Ok(occupied)
}

/// Histogram bars `(left, right, height)` as filled grey boxes with darker edges.
fn draw_bars(
    canvas: Option<&Canvas<'_>>,
    frame: &Frame,
    bars: &[(f64, f64, f64)],
    occupied: &mut [bool],
) -> Result<()> {
    let (w, h) = (frame.w() as f64, frame.h() as f64);
    let base = frame.local((frame.x.0, 0.0)).1.clamp(0.0, h);
    for &(left, right, height) in bars {
        if height == 0.0 {
            continue;
        }
        let (xl, yt) = frame.local((left, height));
        let xr = frame.local((right, height)).0;
        let x0 = xl.clamp(0.0, w).round() as i32;
        let x1 = xr.clamp(0.0, w).round() as i32;
        let (ya, yb) = (yt.clamp(0.0, h).round() as i32, base.round() as i32);
        let (y0, y1) = (ya.min(yb), ya.max(yb));
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        for y in y0..y1 {
            let row = y as usize * frame.w();
            occupied[row + x0 as usize..row + x1 as usize].fill(true);
        }
        let Some(canvas) = canvas else { continue };
        let (ox, oy) = (frame.px0, frame.py0);
        canvas.fill(ox + x0, oy + y0, ox + x1, oy + y1, BAR_FILL)?;
        // Edges: left, right and the top (or bottom for negative bars).
        canvas.fill(ox + x0, oy + y0, ox + x0 + 1, oy + y1, BAR_EDGE)?;
        canvas.fill(ox + x1 - 1, oy + y0, ox + x1, oy + y1, BAR_EDGE)?;
        let edge_y = if ya <= yb { y0 } else { y1 - 1 };
        canvas.fill(ox + x0, oy + edge_y, ox + x1, oy + edge_y + 1, BAR_EDGE)?;
    }
    Ok(())
}

/// Opaque anti-aliased curves, one layer each.
fn draw_curves(
    canvas: Option<&Canvas<'_>>,
    frame: &Frame,
    curves: &[Curve],
    raster: &mut Raster,
    occupied: &mut [bool],
) -> Result<()> {
    for curve in curves {
        raster.begin();
        stroke_polyline(raster, frame, &curve.points, CURVE_WIDTH);
        for &i in &raster.touched {
            let c = f64::from(raster.cov[i]);
            if c > 0.2 {
                occupied[i] = true;
            }
            if let Some(canvas) = canvas {
                let (x, y) = ((i % raster.w) as i32, (i / raster.w) as i32);
                canvas.pixel(frame.px0 + x, frame.py0 + y, curve.color, c)?;
            }
        }
    }
    Ok(())
}

/// Translucent paths: each path is one layer of opacity `alpha × coverage`; layers are
/// combined per pixel (`1 − Π(1 − αᵢ)`) and blended once over the background.
fn draw_paths(
    canvas: Option<&Canvas<'_>>,
    frame: &Frame,
    paths: &[Vec<(f64, f64)>],
    color: (u8, u8, u8),
    raster: &mut Raster,
    occupied: &mut [bool],
) -> Result<()> {
    let alpha = (20.0 / paths.len() as f64).clamp(0.06, 0.8) as f32;
    let mut transmit = vec![1.0f32; raster.w * raster.h];
    for p in paths {
        raster.begin();
        stroke_polyline(raster, frame, p, PATH_WIDTH);
        for &i in &raster.touched {
            transmit[i] *= 1.0 - alpha * raster.cov[i];
        }
    }
    for (i, &t) in transmit.iter().enumerate() {
        if t >= 1.0 {
            continue;
        }
        if t < 0.8 {
            occupied[i] = true;
        }
        if let Some(canvas) = canvas {
            let (x, y) = ((i % raster.w) as i32, (i / raster.w) as i32);
            canvas.pixel(frame.px0 + x, frame.py0 + y, color, f64::from(1.0 - t))?;
        }
    }
    Ok(())
}

/// Distance of the legend box from the plot-area frame.
const LEGEND_INSET: i32 = 10;

/// Size and (shortened) labels of a legend box.
struct LegendBox {
    labels: Vec<String>,
    w: i32,
    h: i32,
}

impl LegendBox {
    const PAD: i32 = 10;
    const KEY_W: i32 = 30;
    const ROW: i32 = CHAR_PX + 8;

    fn new(frame: &Frame, entries: &[LegendEntry]) -> Self {
        let room = (frame.px1 - frame.px0) - 2 * LEGEND_INSET - 3 * Self::PAD - Self::KEY_W;
        let labels: Vec<String> = entries
            .iter()
            .map(|e| fit_text(&e.label, room.max(4 * CHAR_PX)))
            .collect();
        let text_w = labels.iter().map(|l| text_width(l)).max().unwrap_or(0);
        Self {
            w: Self::PAD + Self::KEY_W + Self::PAD + text_w + Self::PAD,
            h: 2 * Self::PAD + entries.len() as i32 * Self::ROW - 8,
            labels,
        }
    }

    /// The corner (top-right, top-left, bottom-right, bottom-left, first best) whose box
    /// covers the fewest occupied pixels, and that number.
    fn corner(&self, frame: &Frame, occupied: &[bool]) -> ((i32, i32), usize) {
        let left = frame.px0 + LEGEND_INSET;
        let right = frame.px1 - LEGEND_INSET - self.w;
        let top = frame.py0 + LEGEND_INSET;
        let bottom = frame.py1 - LEGEND_INSET - self.h;
        let cost = |(bx, by): (i32, i32)| -> usize {
            let mut n = 0;
            for y in by.max(frame.py0)..(by + self.h).min(frame.py1) {
                let row = (y - frame.py0) as usize * frame.w();
                for x in bx.max(frame.px0)..(bx + self.w).min(frame.px1) {
                    n += usize::from(occupied[row + (x - frame.px0) as usize]);
                }
            }
            n
        };
        [(right, top), (left, top), (right, bottom), (left, bottom)]
            .into_iter()
            .map(|c| (c, cost(c)))
            .min_by_key(|&(_, n)| n)
            .expect("four candidates")
    }

    fn draw(
        &self,
        canvas: &Canvas<'_>,
        (bx, by): (i32, i32),
        entries: &[LegendEntry],
    ) -> Result<()> {
        let (bw, bh) = (self.w, self.h);
        canvas.blend(bx, by, bx + bw, by + bh, (255, 255, 255), 0.9)?;
        let border = (150, 150, 150);
        canvas.fill(bx, by, bx + bw, by + 1, border)?;
        canvas.fill(bx, by + bh - 1, bx + bw, by + bh, border)?;
        canvas.fill(bx, by, bx + 1, by + bh, border)?;
        canvas.fill(bx + bw - 1, by, bx + bw, by + bh, border)?;
        for (k, (entry, label)) in entries.iter().zip(&self.labels).enumerate() {
            let ty = by + Self::PAD + k as i32 * Self::ROW;
            let kx = bx + Self::PAD;
            let kw = Self::KEY_W;
            let mid = ty + CHAR_PX / 2;
            match entry.key {
                LegendKey::Line => canvas.fill(kx, mid - 1, kx + kw, mid + 2, entry.color)?,
                LegendKey::Bar => {
                    let (x0, x1) = (kx + 4, kx + kw - 4);
                    canvas.fill(x0, ty, x1, ty + CHAR_PX, entry.color)?;
                    canvas.fill(x0, ty, x1, ty + 1, BAR_EDGE)?;
                    canvas.fill(x0, ty, x0 + 1, ty + CHAR_PX, BAR_EDGE)?;
                    canvas.fill(x1 - 1, ty, x1, ty + CHAR_PX, BAR_EDGE)?;
                }
            }
            let tx = kx + kw + Self::PAD;
            canvas.text(label, tx, ty, Dir::Horizontal, TEXT, false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, unique per process and test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The file is a 900×600 PNG of non-trivial size.
    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "not a PNG: {}",
            path.display()
        );
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(
            bytes.len() > 5_000,
            "suspiciously small PNG: {} bytes",
            bytes.len()
        );
    }

    /// Small deterministic generator (xorshift64*), uniform in (0, 1).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (v as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    const MODES: [f64; 5] = [-8.0, -4.0, 0.0, 4.0, 8.0];

    /// Samples of the equal-weight mixture of Laplace(μ, 1) at the five modes.
    fn laplace_mixture(n: usize, rng: &mut Rng) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let mu = MODES[((rng.uniform() * 5.0) as usize).min(4)];
                let u = rng.uniform() - 0.5;
                mu - u.signum() * (1.0 - 2.0 * u.abs()).ln()
            })
            .collect()
    }

    fn laplace_mixture_pdf(x: f64) -> f64 {
        MODES
            .iter()
            .map(|m| 0.2 * 0.5 * (-(x - m).abs()).exp())
            .sum()
    }

    fn grid(a: f64, b: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect()
    }

    fn demo_density(path: &Path) -> Result<()> {
        let mut rng = Rng(0x5EED);
        let samples = laplace_mixture(4000, &mut rng);
        let truth: Vec<_> = grid(-12.0, 12.0, 481)
            .into_iter()
            .map(|x| (x, laplace_mixture_pdf(x)))
            .collect();
        // A stand-in "learned" density: slightly too smooth.
        let learned: Vec<_> = grid(-12.0, 12.0, 481)
            .into_iter()
            .map(|x| {
                let s: f64 = MODES
                    .iter()
                    .map(|m| 0.2 * (-(x - m) * (x - m) / (2.0 * 1.3f64.powi(2))).exp())
                    .sum();
                (x, s / (1.3 * (std::f64::consts::TAU).sqrt()))
            })
            .collect();
        let fig = Figure::new("Laplace mixture: learned vs true density", "x", "density")
            .with_x_range(-12.0, 12.0);
        density_figure(
            path,
            &fig,
            &samples,
            96,
            &[
                Curve::new("true density", truth, (214, 39, 40)),
                Curve::new("learned p(x)", learned, (31, 119, 180)),
            ],
        )
    }

    fn demo_paths(path: &Path) -> Result<()> {
        let mut rng = Rng(42);
        let steps = 200;
        let paths: Vec<Vec<(f64, f64)>> = (0..100)
            .map(|_| {
                let target = MODES[((rng.uniform() * 5.0) as usize).min(4)];
                let mut x = rng.normal();
                let mut p = vec![(0.0, x)];
                for k in 1..=steps {
                    let t = k as f64 / steps as f64;
                    let dt = 1.0 / steps as f64;
                    let remaining = (1.0 - t + dt).max(dt);
                    x += (target - x) / remaining * dt + 0.8 * dt.sqrt() * rng.normal();
                    p.push((t, x));
                }
                p
            })
            .collect();
        let fig = Figure::new("100 sample paths from prior to data", "t", "x(t)");
        paths_figure(path, &fig, &paths, (31, 119, 180))
    }

    fn demo_lines(path: &Path) -> Result<()> {
        let ts = grid(0.0, 1.0, 201);
        let f = |g: &dyn Fn(f64) -> f64| ts.iter().map(|&t| (t, g(t))).collect::<Vec<_>>();
        let fig = Figure::new("Schedules over time", "t", "value");
        line_figure(
            path,
            &fig,
            &[
                Curve::new("α(t) = t", f(&|t| t), (31, 119, 180)),
                Curve::new("β(t) = 1 - t", f(&|t| 1.0 - t), (255, 127, 14)),
                Curve::new("σ(t)", f(&|t| 0.4 * (t * (1.0 - t)).sqrt()), (44, 160, 44)),
            ],
        )
    }

    fn demo_training(path: &Path) -> Result<()> {
        let mut rng = Rng(7);
        let loss: Vec<_> = (0..2000)
            .map(|i| {
                let s = i as f64;
                (
                    s,
                    0.002 + 0.05 * (-s / 300.0).exp() * (1.0 + 0.2 * rng.normal()),
                )
            })
            .collect();
        let val: Vec<_> = (0..=20)
            .map(|i| {
                let s = i as f64 * 100.0;
                (s, 0.003 + 0.045 * (-s / 350.0).exp())
            })
            .collect();
        let fig = Figure::new("Training", "step", "loss");
        line_figure(
            path,
            &fig,
            &[
                Curve::new("train", loss, (31, 119, 180)),
                Curve::new("validation", val, (214, 39, 40)),
            ],
        )
    }

    /// Axes in scientific notation, negative values, a gap from NaN and five legend
    /// entries with a long label.
    fn demo_extreme_scales(path: &Path) -> Result<()> {
        let xs = grid(0.0, 2.4e5, 300);
        let curves: Vec<Curve> = (0..5)
            .map(|k| {
                let pts = xs
                    .iter()
                    .map(|&x| {
                        let y = 3e-4 * (x / 4e4 + k as f64).sin() - 1e-4 * k as f64;
                        (
                            x,
                            if (1.0e5..1.1e5).contains(&x) && k == 0 {
                                f64::NAN
                            } else {
                                y
                            },
                        )
                    })
                    .collect();
                let label = if k == 4 {
                    "a rather long legend label for curve 4".to_string()
                } else {
                    format!("curve {k}")
                };
                let colors = [
                    (31, 119, 180),
                    (255, 127, 14),
                    (44, 160, 44),
                    (214, 39, 40),
                    (148, 103, 189),
                ];
                Curve::new(label, pts, colors[k])
            })
            .collect();
        let fig = Figure::new(
            "Tiny values over a large range",
            "iteration",
            "gradient norm",
        );
        line_figure(path, &fig, &curves)
    }

    #[test]
    fn density_figure_writes_png() {
        let dir = temp_dir("density");
        let path = dir.join("density.png");
        demo_density(&path).unwrap();
        assert_png(&path);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn paths_figure_writes_png() {
        let dir = temp_dir("paths");
        let path = dir.join("paths.png");
        demo_paths(&path).unwrap();
        assert_png(&path);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn line_figure_writes_png() {
        let dir = temp_dir("lines");
        let path = dir.join("nested/lines.png");
        demo_lines(&path).unwrap();
        assert_png(&path);
        let path = dir.join("training.png");
        demo_training(&path).unwrap();
        assert_png(&path);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn non_finite_points_are_skipped() {
        let dir = temp_dir("nonfinite");
        let path = dir.join("nan.png");
        let pts = vec![
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 3.0),
            (3.0, 2.0),
            (f64::INFINITY, 1.0),
            (4.0, 5.0),
            (5.0, f64::NEG_INFINITY),
        ];
        line_figure(
            &path,
            &Figure::new("gaps", "x", "y"),
            &[Curve::new("c", pts, (0, 0, 0))],
        )
        .unwrap();
        assert_png(&path);
        let samples = [1.0, f64::NAN, 2.0, 2.5, f64::INFINITY, 3.0];
        density_figure(&path, &Figure::default(), &samples, 4, &[]).unwrap();
        assert_png(&path);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_or_invalid_input_is_an_error() {
        let dir = temp_dir("errors");
        let path = dir.join("e.png");
        let fig = Figure::new("t", "x", "y");
        let nan_curve = Curve::new("n", vec![(f64::NAN, 1.0)], (0, 0, 0));
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(density_figure(&path, &fig, &[], 10, &[])).contains("no finite samples"));
        assert!(msg(density_figure(&path, &fig, &[f64::NAN], 10, &[])).contains("no finite"));
        assert!(msg(density_figure(&path, &fig, &[1.0], 0, &[])).contains("bins"));
        assert!(msg(line_figure(&path, &fig, &[])).contains("no curves"));
        assert!(msg(line_figure(&path, &fig, &[nan_curve])).contains("finite"));
        assert!(msg(paths_figure(&path, &fig, &[], (0, 0, 0))).contains("no paths"));
        assert!(msg(paths_figure(&path, &fig, &[vec![]], (0, 0, 0))).contains("finite"));
        let bad = fig.clone().with_x_range(1.0, 1.0);
        let ok = [Curve::new("c", vec![(0.0, 0.0), (1.0, 1.0)], (0, 0, 0))];
        assert!(msg(line_figure(&path, &bad, &ok)).contains("x_range"));
        let bad = fig.clone().with_y_range(0.0, f64::NAN);
        assert!(msg(line_figure(&path, &bad, &ok)).contains("y_range"));
        assert!(msg(line_figure(&dir.join("e.svg"), &fig, &ok)).contains(".png"));
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nice_steps_and_ticks() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert!((nice_step(0.0023) - 0.005).abs() < 1e-15);
        assert_eq!(next_step(2.0), 5.0);
        assert_eq!(next_step(5.0), 10.0);
        assert_eq!(tick_values(-8.3, 8.3, 4.0), vec![-8.0, -4.0, 0.0, 4.0, 8.0]);
        let v = tick_values(0.0, 1.0, 0.25);
        assert_eq!(v.len(), 5);
        assert_eq!(
            tick_labels(&v, 0.25),
            ["0.00", "0.25", "0.50", "0.75", "1.00"]
        );
        assert_eq!(tick_labels(&[-8.0, 0.0, 8.0], 4.0), ["-8", "0", "8"]);
        assert_eq!(
            tick_labels(&[0.0, 0.05, 0.1], 0.05),
            ["0.00", "0.05", "0.10"]
        );
        assert_eq!(tick_labels(&[0.0, 0.5, 1.0], 0.5), ["0.0", "0.5", "1.0"]);
        assert_eq!(tick_labels(&[-0.2, 0.0, 0.2], 0.2), ["-0.2", "0.0", "0.2"]);
        let v = tick_values(0.2, 0.31, 0.05);
        assert_eq!(tick_labels(&v, 0.05), ["0.20", "0.25", "0.30"]);
        let v = tick_values(0.0, 0.003, 0.001);
        assert_eq!(tick_labels(&v, 0.001), ["0", "1e-3", "2e-3", "3e-3"]);
        assert_eq!(tick_labels(&[0.0, 5e5, 1e6], 5e5), ["0", "5e5", "1e6"]);
        assert_eq!(sci_label(2.5e-4, -5), "2.5e-4");
        assert_eq!(sci_label(-1e-3, -3), "-1e-3");
    }

    #[test]
    fn ticks_do_not_crowd() {
        let t = choose_ticks(-12.0, 12.0, 800.0, 90.0, 6.0, |l| text_width(l) as f64);
        let labels: Vec<_> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert!(labels.contains(&"0") && labels.len() >= 4, "{labels:?}");
        for w in t.windows(2) {
            let gap = (w[1].0 - w[0].0) / 24.0 * 800.0;
            assert!(gap >= text_width(&w[0].1) as f64);
        }
    }

    #[test]
    fn glyphs_cover_labels() {
        for c in "Az09-.e αβσ".chars() {
            if c != ' ' {
                assert_ne!(glyph(c), [0; 8], "{c}");
            }
        }
        assert_eq!(glyph('\u{2212}'), glyph('-'));
    }

    /// Renders the demo figures into `<temp dir>/plot-demo` for looking at them:
    /// `cargo test -p xtask plot::tests::demo -- --ignored`.
    #[test]
    #[ignore = "writes demo figures for manual inspection"]
    fn demo() {
        let dir = std::env::temp_dir().join("plot-demo");
        demo_density(&dir.join("density.png")).unwrap();
        demo_paths(&dir.join("paths.png")).unwrap();
        demo_lines(&dir.join("lines.png")).unwrap();
        demo_training(&dir.join("training.png")).unwrap();
        demo_extreme_scales(&dir.join("scales.png")).unwrap();
        eprintln!("demo figures in {}", dir.display());
    }
}
