//! Figures for the reproduced experiments, drawn with plotters as PNG and SVG.
//!
//! Every figure is drawn by one function, [`draw`], generic over the plotters backend:
//! it is called once with a [`BitMapBackend`] for `name.png` (900×600) and once with an
//! [`SVGBackend`] for `name.svg` beside it. Text is rendered through plotters' `ab_glyph`
//! feature from DejaVu Sans, embedded from `xtask/assets/fonts/DejaVuSans.ttf` (licence in
//! `LICENSE-DejaVu.txt` beside it), so no system font library or fontconfig is needed and
//! Greek labels such as `α(t)`, `β`, `σ` or `λ(t)` render everywhere. The SVG names the
//! font family `sans-serif` and leaves text rendering to the viewer.
//!
//! Three figure kinds, on a white background with a title, axis labels, tick labels and a
//! light grid:
//!
//! * [`density_figure`]: a density-normalised histogram of samples (light grey bars)
//!   with density curves on top, e.g. a learned 1-D density against the data and the
//!   true density;
//! * [`line_figure`]: several labelled curves, e.g. α(t), β(t), σ(t) or training curves;
//! * [`paths_figure`]: many thin translucent sample paths x(t), e.g. 100 paths from the
//!   prior at t = 0 to the data at t = 1.
//!
//! Curves are 2 px wide. The legend goes into the upper corner (left or right) that
//! covers fewer data; when both are busy and the y range is fitted to the data, the range
//! is raised so that the legend sits in a free band above the content. Lines are clipped
//! to the plot area.
//!
//! Non-finite points (NaN, ±inf) are skipped: a curve or path is broken into separate
//! pieces at such a point instead of being joined across it. Inputs without any finite
//! point are an error, as are `bins = 0`, empty or non-finite ranges and a path that does
//! not end in `.png`. Missing parent directories of the output path are created.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::{
    BitMapBackend, ChartBuilder, Color, DrawingArea, DrawingBackend, FontStyle, IntoDrawingArea,
    IntoFont, LineSeries, PathElement, RGBColor, Ranged, Rectangle, SVGBackend,
    SeriesLabelPosition, WHITE,
};

/// Width of every figure in pixels.
pub const WIDTH: u32 = 900;
/// Height of every figure in pixels.
pub const HEIGHT: u32 = 600;

/// DejaVu Sans (Bitstream Vera licence, see `xtask/assets/fonts/LICENSE-DejaVu.txt`).
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family name the embedded font is registered under.
const FAMILY: &str = "sans-serif";

const TITLE_PX: f64 = 26.0;
const DESC_PX: f64 = 20.0;
const TICK_PX: f64 = 16.0;
const LEGEND_PX: f64 = 16.0;
const MARGIN: u32 = 20;
const X_AREA: u32 = 55;
const Y_AREA: u32 = 80;
const X_TICKS: usize = 10;
const Y_TICKS: usize = 8;
/// Legend key width and inner margin, in pixels (see plotters' `SeriesLabelStyle`).
const LEGEND_KEY: u32 = 30;
const LEGEND_MARGIN: u32 = 8;

const BAR: RGBColor = RGBColor(200, 200, 200);
const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS: RGBColor = RGBColor(40, 40, 40);

/// One labelled curve of a [`line_figure`] or [`density_figure`].
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Legend text; an empty label leaves the curve out of the legend.
    pub label: String,
    /// Points `(x, y)` joined in the given order; non-finite points break the line.
    pub points: Vec<(f64, f64)>,
    /// Line colour as RGB.
    pub color: (u8, u8, u8),
    /// Line width in pixels (2 unless set).
    pub width: u32,
}

impl Curve {
    /// A curve with the given legend label, points and RGB colour, 2 pixels wide.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: (u8, u8, u8)) -> Self {
        Self {
            label: label.into(),
            points,
            color,
            width: 2,
        }
    }

    /// The same curve `width` pixels wide: a thin line drawn last stays visible on top of a
    /// wider one it coincides with.
    pub fn with_width(mut self, width: u32) -> Self {
        self.width = width;
        self
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
/// grey bars, with curves on top and a legend; writes `path` (PNG) and the SVG beside it.
///
/// The bins cover `fig.x_range` when given, else the range of the finite samples. Bar
/// heights are `count / (n * bin_width)` with `n` the number of finite samples, so that
/// the histogram is comparable with a density curve even when some samples fall outside
/// the visible range (those are simply not shown). A fitted y range starts at 0.
///
/// Errors if `samples` has no finite value, `bins` is 0, a given range is empty or not
/// finite, or a file cannot be written.
pub fn density_figure(
    path: &Path,
    fig: &Figure,
    samples: &[f64],
    bins: usize,
    curves: &[Curve],
) -> Result<()> {
    ensure!(bins > 0, "density_figure: `bins` must be at least 1, got 0");
    let finite: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    ensure!(
        !finite.is_empty(),
        "density_figure: no finite samples to histogram ({} given)",
        samples.len()
    );
    let fixed_x = checked_range(fig.x_range, "x_range")?;
    let fixed_y = checked_range(fig.y_range, "y_range")?;

    // Histogram over the given x range, else over the sample extent.
    let (lo, hi) = fixed_x.unwrap_or_else(|| {
        let (lo, hi) = extent(finite.iter().copied()).expect("non-empty");
        if lo == hi {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    });
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &v in finite.iter().filter(|&&v| v >= lo && v <= hi) {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
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

    let x = fixed_x.unwrap_or_else(|| {
        let curve_xs = curves
            .iter()
            .flat_map(|c| finite_points(&c.points).map(|p| p.0));
        let (a, b) = extent(finite.iter().copied().chain(curve_xs)).expect("non-empty");
        pad_range(a.min(lo), b.max(hi), 0.03)
    });
    let y = fixed_y.unwrap_or_else(|| {
        let ys = bars.iter().map(|b| b.2).chain(
            curves
                .iter()
                .flat_map(|c| finite_points(&c.points))
                .filter(|p| p.0 >= x.0 && p.0 <= x.1)
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
    });
    let scene = Scene {
        fig,
        x,
        y,
        bars,
        curves,
        paths: &[],
        path_color: (0, 0, 0),
        legend: SeriesLabelPosition::UpperRight,
    };
    write(path, scene.with_legend(fixed_y.is_none())?)
}

/// Several curves (e.g. α, β, σ over t; training curves), with a legend; writes `path`
/// (PNG) and the SVG beside it.
///
/// Curves are drawn 2 px wide in the given order; labelled curves get a legend entry.
/// Errors if `curves` is empty or has no finite point, a given range is empty or not
/// finite, or a file cannot be written.
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
    let (x, y) = fit_ranges(all, fixed_x, fixed_y);
    let scene = Scene {
        fig,
        x,
        y,
        bars: Vec::new(),
        curves,
        paths: &[],
        path_color: (0, 0, 0),
        legend: SeriesLabelPosition::UpperRight,
    };
    write(path, scene.with_legend(fixed_y.is_none())?)
}

/// Many thin paths (t, x) in one translucent colour, e.g. 100 sample paths from prior to
/// data; writes `path` (PNG) and the SVG beside it.
///
/// The opacity of a single path falls with the number of paths (`20 / n`, kept within
/// 0.06..0.8), so that regions crossed by many paths come out darker. Errors if `paths`
/// is empty or has no finite point, a given range is empty or not finite, or a file
/// cannot be written.
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
    let (x, y) = fit_ranges(all, fixed_x, fixed_y);
    let scene = Scene {
        fig,
        x,
        y,
        bars: Vec::new(),
        curves: &[],
        paths,
        path_color: color,
        legend: SeriesLabelPosition::UpperRight,
    };
    write(path, scene)
}

/// Everything one figure shows, in data coordinates.
struct Scene<'a> {
    fig: &'a Figure,
    x: (f64, f64),
    y: (f64, f64),
    /// Histogram bars `(left, right, height)`.
    bars: Vec<(f64, f64, f64)>,
    curves: &'a [Curve],
    paths: &'a [Vec<(f64, f64)>],
    path_color: (u8, u8, u8),
    legend: SeriesLabelPosition,
}

impl Scene<'_> {
    /// Legend texts, in drawing order.
    fn legend_labels(&self) -> Vec<&str> {
        let hist = (!self.bars.is_empty()).then_some("histogram");
        let curves = self.curves.iter().map(|c| c.label.as_str());
        hist.into_iter()
            .chain(curves)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Puts the legend into the upper corner that covers fewer data points and, when both
    /// are busy and `y_fitted`, raises the top of the y range to free a band for it.
    fn with_legend(mut self, y_fitted: bool) -> Result<Self> {
        let labels = self.legend_labels();
        if labels.is_empty() {
            return Ok(self);
        }
        register_font()?;
        // Legend box size as plotters lays it out, as a fraction of the plot area (whose
        // size is estimated from the fixed margins).
        let font = (FAMILY, LEGEND_PX).into_font();
        let mut text_w = 0u32;
        for l in &labels {
            let (w, _) = font
                .box_size(l)
                .map_err(|e| anyhow!("measuring text: {e}"))?;
            text_w = text_w.max(w);
        }
        // Rows 1.25 font sizes apart, the last one as high as the text box (`size / 1.24`).
        let rows = 1.25 * LEGEND_PX * (labels.len() - 1) as f64 + LEGEND_PX / 1.24;
        let box_h = rows + 2.0 * f64::from(LEGEND_MARGIN);
        let box_w = f64::from(text_w + LEGEND_KEY + 2 * LEGEND_MARGIN);
        let plot_w = f64::from(WIDTH - 2 * MARGIN - Y_AREA);
        let plot_h = f64::from(HEIGHT - 2 * MARGIN - X_AREA) - 1.3 * TITLE_PX;
        let (fw, fh) = ((box_w + 10.0) / plot_w, (box_h + 10.0) / plot_h);

        // Content as points in [0, 1]² of the plot area: curve points (with points added
        // along long segments) and the tops of the histogram bars.
        let (x, y) = (self.x, self.y);
        let unit = |p: (f64, f64)| ((p.0 - x.0) / (x.1 - x.0), (p.1 - y.0) / (y.1 - y.0));
        let mut content = Vec::new();
        for &(l, r, h) in &self.bars {
            content.extend([(l, h), ((l + r) / 2.0, h), (r, h)].map(unit));
        }
        for c in self.curves {
            for piece in visible_pieces(&c.points, x, y) {
                content.extend(piece.iter().map(|&p| unit(p)));
                for w in piece.windows(2) {
                    let (a, b) = (unit(w[0]), unit(w[1]));
                    let n = ((b.0 - a.0).hypot(b.1 - a.1) / 0.01).ceil().min(100.0) as usize;
                    content.extend((1..n).map(|i| {
                        let t = i as f64 / n as f64;
                        (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
                    }));
                }
            }
        }
        let covered = |x0: f64, x1: f64| {
            content
                .iter()
                .filter(|p| p.0 >= x0 && p.0 <= x1 && p.1 >= 1.0 - fh)
                .count()
        };
        let (right, left) = (covered(1.0 - fw, 1.0), covered(0.0, fw));
        self.legend = if left < right {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        };
        if y_fitted && left.min(right) > 0 && fh < 0.4 {
            self.y.1 = y.0 + (y.1 - y.0) / (1.0 - fh);
        }
        Ok(self)
    }
}

/// Checks the output path, creates its directory and draws the scene twice: `path` as a
/// PNG and `path` with extension `svg`.
fn write(path: &Path, scene: Scene<'_>) -> Result<()> {
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    ensure!(
        is_png,
        "figure path {} must end in .png (the SVG is written beside it)",
        path.display()
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
    }
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    draw(root, &scene).with_context(|| format!("drawing {}", path.display()))?;
    let svg = path.with_extension("svg");
    let root = SVGBackend::new(&svg, (WIDTH, HEIGHT)).into_drawing_area();
    draw(root, &scene).with_context(|| format!("drawing {}", svg.display()))
}

/// Registers the embedded font once per process as plotters' `sans-serif`.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(ok, "the embedded font DejaVuSans.ttf could not be parsed");
    Ok(())
}

/// A plotters error as an anyhow error.
fn draw_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotters: {e}")
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// Draws the scene onto `root` (any plotters backend) and finishes the file.
fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &Scene<'_>) -> Result<()> {
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.fig.title, (FAMILY, TITLE_PX))
        .margin(MARGIN)
        .x_label_area_size(X_AREA)
        .y_label_area_size(Y_AREA)
        .build_cartesian_2d(s.x.0..s.x.1, s.y.0..s.y.1)
        .map_err(draw_err)?;
    let (x_fmt, y_fmt) = (tick_format(s.x, X_TICKS), tick_format(s.y, Y_TICKS));
    chart
        .configure_mesh()
        .x_desc(s.fig.x_label.as_str())
        .y_desc(s.fig.y_label.as_str())
        .x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FAMILY, TICK_PX))
        .axis_desc_style((FAMILY, DESC_PX))
        .axis_style(AXIS)
        .bold_line_style(GRID)
        .max_light_lines(0)
        .draw()
        .map_err(draw_err)?;

    if !s.bars.is_empty() {
        let (y0, y1) = s.y;
        let bars = s.bars.iter().filter_map(|&(l, r, h)| {
            let (lo, hi) = (y0.max(0.0_f64.min(h)), y1.min(h.max(0.0)));
            let (l, r) = (l.max(s.x.0), r.min(s.x.1));
            (lo < hi && l < r).then(|| Rectangle::new([(l, lo), (r, hi)], BAR.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(draw_err)?
            .label("histogram")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], BAR.filled()));
    }

    let alpha = (20.0 / s.paths.len().max(1) as f64).clamp(0.06, 0.8);
    let path_style = rgb(s.path_color).mix(alpha).stroke_width(1);
    for p in s.paths {
        for piece in visible_pieces(p, s.x, s.y) {
            chart
                .draw_series(LineSeries::new(piece, path_style))
                .map_err(draw_err)?;
        }
    }

    for c in s.curves {
        let style = rgb(c.color).stroke_width(c.width);
        let mut pieces = visible_pieces(&c.points, s.x, s.y);
        if pieces.is_empty() {
            pieces.push(Vec::new()); // still gets its legend entry
        }
        for (i, piece) in pieces.into_iter().enumerate() {
            let anno = chart
                .draw_series(LineSeries::new(piece, style))
                .map_err(draw_err)?;
            if i == 0 && !c.label.is_empty() {
                anno.label(c.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }

    // Frame around the plot area (the mesh draws only the left and bottom axes).
    chart
        .plotting_area()
        .draw(&Rectangle::new([(s.x.0, s.y.0), (s.x.1, s.y.1)], AXIS))
        .map_err(draw_err)?;

    if !s.legend_labels().is_empty() {
        chart
            .configure_series_labels()
            .position(s.legend.clone())
            .legend_area_size(LEGEND_KEY)
            .margin(LEGEND_MARGIN)
            .label_font((FAMILY, LEGEND_PX))
            .background_style(WHITE.mix(0.9))
            .border_style(AXIS)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// Tick-label formatter for an axis over `range` with at most `n` labels: the decimals
/// the tick step needs (`-8`, `0.5`, `0.05`), or scientific notation (`2e-4`, `1.5e5`)
/// for very large or very small values.
fn tick_format(range: (f64, f64), n: usize) -> impl Fn(&f64) -> String {
    // The same key points plotters' mesh draws for `n` labels.
    let ticks = RangedCoordf64::from(range.0..range.1).key_points(n);
    let step = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(range.1 - range.0, f64::min);
    let k = (step.log10() + 1e-6).floor() as i32;
    let largest = range.0.abs().max(range.1.abs());
    let scientific = largest >= 1e5 || k < -3;
    move |&v: &f64| {
        let v = if v.abs() < 1e-6 * step { 0.0 } else { v };
        if scientific && v == 0.0 {
            "0".to_string()
        } else if scientific {
            let digits = ((v.abs().log10() + 1e-6).floor() as i32 - k).max(0) as usize;
            let s = format!("{v:.digits$e}");
            let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
            let mantissa = if mantissa.contains('.') {
                mantissa.trim_end_matches('0').trim_end_matches('.')
            } else {
                mantissa
            };
            format!("{mantissa}e{exponent}")
        } else {
            let decimals = (-k).max(0) as usize;
            format!("{v:.decimals$}")
        }
    }
}

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
    let pad = if hi > lo {
        frac * (hi - lo)
    } else if lo != 0.0 {
        0.1 * lo.abs()
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// Axis ranges for line-like content: the fixed ones, else the data extent plus 2 % (x)
/// or 5 % (y). The fitted y range only looks at points inside the x range.
fn fit_ranges<I: Iterator<Item = (f64, f64)>>(
    all: impl Fn() -> I,
    fixed_x: Option<(f64, f64)>,
    fixed_y: Option<(f64, f64)>,
) -> ((f64, f64), (f64, f64)) {
    let x = fixed_x.unwrap_or_else(|| {
        let (a, b) = extent(all().map(|p| p.0)).unwrap_or((0.0, 1.0));
        pad_range(a, b, 0.02)
    });
    let y = fixed_y.unwrap_or_else(|| {
        let ys = all().filter(|p| p.0 >= x.0 && p.0 <= x.1).map(|p| p.1);
        let (a, b) = extent(ys).unwrap_or((0.0, 1.0));
        pad_range(a, b, 0.05)
    });
    (x, y)
}

/// The parts of a polyline inside the box `x × y`, each to be drawn as one line: the
/// polyline is broken at non-finite points and where it leaves the box.
fn visible_pieces(points: &[(f64, f64)], x: (f64, f64), y: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut pieces = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut prev: Option<(f64, f64)> = None;
    for &p in points {
        if !(p.0.is_finite() && p.1.is_finite()) {
            pieces.push(std::mem::take(&mut current));
            prev = None;
            continue;
        }
        if let Some(a) = prev {
            match clip_segment(a, p, x, y) {
                Some((c, d)) => {
                    if current.last() != Some(&c) {
                        pieces.push(std::mem::replace(&mut current, vec![c]));
                    }
                    current.push(d);
                }
                None => pieces.push(std::mem::take(&mut current)),
            }
        }
        prev = Some(p);
    }
    pieces.push(current);
    pieces.retain(|piece| piece.len() >= 2);
    pieces
}

/// The part of segment `a`–`b` inside the box `x × y` (Liang–Barsky), `None` when the
/// segment misses the box. Endpoints inside the box are returned unchanged.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    x: (f64, f64),
    y: (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - x.0),
        (dx, x.1 - a.0),
        (-dy, a.1 - y.0),
        (dy, y.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            t0 = t0.max(q / p);
        } else {
            t1 = t1.min(q / p);
        }
    }
    let at = |t: f64| {
        if t <= 0.0 {
            a
        } else if t >= 1.0 {
            b
        } else {
            (a.0 + t * dx, a.1 + t * dy)
        }
    };
    (t0 <= t1).then(|| (at(t0), at(t1)))
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

    /// `path` is a 900×600 PNG of non-trivial size and the SVG beside it is a 900×600
    /// SVG containing every string of `texts`.
    fn assert_written(path: &Path, texts: &[&str]) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(bytes.len() > 5_000, "small PNG: {} bytes", bytes.len());
        let svg = std::fs::read_to_string(path.with_extension("svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"viewBox="0 0 900 600""#), "{}", &svg[..200]);
        for t in texts {
            assert!(svg.contains(t), "SVG lacks {t:?}");
        }
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

    fn grid(a: f64, b: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect()
    }

    /// Samples of the equal-weight mixture of Laplace(μ, 1) at the five modes, its true
    /// density and a slightly too smooth "learned" density.
    fn demo_density(path: &Path) -> Result<()> {
        let mut rng = Rng(0x5EED);
        let samples: Vec<f64> = (0..4000)
            .map(|_| {
                let mu = MODES[((rng.uniform() * 5.0) as usize).min(4)];
                let u = rng.uniform() - 0.5;
                mu - u.signum() * (1.0 - 2.0 * u.abs()).ln()
            })
            .collect();
        let pdf =
            |x: f64, f: &dyn Fn(f64) -> f64| -> f64 { MODES.iter().map(|m| 0.2 * f(x - m)).sum() };
        let curve = |f: &dyn Fn(f64) -> f64| {
            grid(-12.0, 12.0, 481)
                .into_iter()
                .map(|x| (x, pdf(x, f)))
                .collect::<Vec<_>>()
        };
        let s = 1.3f64;
        let truth = curve(&|d| 0.5 * (-d.abs()).exp());
        let learned =
            curve(&|d| (-d * d / (2.0 * s * s)).exp() / (s * std::f64::consts::TAU.sqrt()));
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
        let dt = 1.0 / steps as f64;
        let paths: Vec<Vec<(f64, f64)>> = (0..100)
            .map(|_| {
                let target = MODES[((rng.uniform() * 5.0) as usize).min(4)];
                let mut x = rng.normal();
                let mut p = vec![(0.0, x)];
                for k in 1..=steps {
                    let t = k as f64 * dt;
                    x += (target - x) / (1.0 - t + dt) * dt + 0.8 * dt.sqrt() * rng.normal();
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
        let fig = Figure::new("Schedules over time: α, β, σ and λ(t)", "t", "value");
        line_figure(
            path,
            &fig,
            &[
                Curve::new("α(t) = t", f(&|t| t), (31, 119, 180)),
                Curve::new("β(t) = 1 − t", f(&|t| 1.0 - t), (255, 127, 14)),
                Curve::new("σ(t)", f(&|t| 0.4 * (t * (1.0 - t)).sqrt()), (44, 160, 44)),
            ],
        )
    }

    /// Axes in scientific notation, negative values, a gap from NaN and five legend
    /// entries with a long label.
    fn demo_extreme_scales(path: &Path) -> Result<()> {
        let colors = [
            (31, 119, 180),
            (255, 127, 14),
            (44, 160, 44),
            (214, 39, 40),
            (148, 103, 189),
        ];
        let curves: Vec<Curve> = (0..5)
            .map(|k| {
                let pts = grid(0.0, 2.4e5, 300)
                    .into_iter()
                    .map(|x| {
                        let gap = k == 0 && (1.0e5..1.1e5).contains(&x);
                        let y = 3e-4 * (x / 4e4 + k as f64).sin() - 1e-4 * k as f64;
                        (x, if gap { f64::NAN } else { y })
                    })
                    .collect();
                let label = match k {
                    4 => "a rather long legend label for curve 4".to_string(),
                    k => format!("curve {k}"),
                };
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
    fn every_figure_kind_writes_png_and_svg() {
        let dir = temp_dir("kinds");
        let path = dir.join("density.png");
        demo_density(&path).unwrap();
        assert_written(&path, &["Laplace mixture", "histogram", "learned p(x)"]);
        let path = dir.join("paths.png");
        demo_paths(&path).unwrap();
        assert_written(&path, &["100 sample paths", "x(t)"]);
        let path = dir.join("nested/deeper/lines.png");
        demo_lines(&path).unwrap();
        assert_written(&path, &["α(t) = t", "β(t)", "σ(t)", "λ(t)"]);
        let path = dir.join("scales.png");
        demo_extreme_scales(&path).unwrap();
        assert_written(&path, &["e5", "e-4", "curve 4"]);
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
        let fig = Figure::new("gaps", "x", "y");
        line_figure(&path, &fig, &[Curve::new("c", pts.clone(), (0, 0, 0))]).unwrap();
        assert_written(&path, &["gaps"]);
        let samples = [1.0, f64::NAN, 2.0, 2.5, f64::INFINITY, 3.0];
        density_figure(&path, &Figure::default(), &samples, 4, &[]).unwrap();
        assert_written(&path, &["histogram"]);
        paths_figure(
            &path,
            &fig,
            &[pts.clone(), vec![(0.0, f64::NAN)]],
            (0, 0, 0),
        )
        .unwrap();
        assert_written(&path, &["gaps"]);

        // Only (2, 3)–(3, 2) has two finite neighbours; lone finite points draw nothing.
        let (x, y) = ((-10.0, 10.0), (-10.0, 10.0));
        assert_eq!(
            visible_pieces(&pts, x, y),
            vec![vec![(2.0, 3.0), (3.0, 2.0)]]
        );
        let two = [
            (0.0, 0.0),
            (1.0, 1.0),
            (f64::NAN, 0.0),
            (2.0, 2.0),
            (3.0, 3.0),
        ];
        assert_eq!(visible_pieces(&two, x, y).len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lines_are_clipped_to_the_plot_area() {
        let (x, y) = ((0.0, 1.0), (0.0, 1.0));
        // Leaves through the top and comes back: two pieces, cut at y = 1.
        let pts = [(0.0, 0.5), (0.5, 1.5), (1.0, 0.5)];
        let pieces = visible_pieces(&pts, x, y);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0], vec![(0.0, 0.5), (0.25, 1.0)]);
        assert_eq!(pieces[1], vec![(0.75, 1.0), (1.0, 0.5)]);
        assert_eq!(clip_segment((2.0, 2.0), (3.0, 3.0), x, y), None);
        assert_eq!(
            clip_segment((0.2, 0.3), (0.4, 0.5), x, y),
            Some(((0.2, 0.3), (0.4, 0.5)))
        );
    }

    #[test]
    fn tick_labels_are_short_and_exact() {
        let labels = |r: (f64, f64), vs: &[f64]| {
            let f = tick_format(r, X_TICKS);
            vs.iter().map(&f).collect::<Vec<_>>()
        };
        assert_eq!(labels((-12.0, 12.0), &[-8.0, 0.0, 8.0]), ["-8", "0", "8"]);
        assert_eq!(labels((0.0, 1.0), &[0.0, 0.1, 0.9]), ["0.0", "0.1", "0.9"]);
        assert_eq!(labels((0.0, 0.3), &[0.05, 0.25]), ["0.05", "0.25"]);
        assert_eq!(labels((0.0, 2.4e5), &[5e4, 2e5]), ["5e4", "2e5"]);
        assert_eq!(labels((-6e-4, 4e-4), &[-5e-4, 1e-4]), ["-5e-4", "1e-4"]);
        assert_eq!(labels((-1.0, 1.0), &[-1e-17]), ["0.0"]);
        assert_eq!(labels((0.0, 2e-4), &[1e-20]), ["0"]);
    }

    #[test]
    fn legend_avoids_the_data() {
        let fig = Figure::new("t", "x", "y");
        // Rising line: the upper right is busy, so the legend goes left and y stays.
        let rising = [Curve::new("up", vec![(0.0, 0.0), (1.0, 1.0)], (0, 0, 0))];
        let scene = |curves| Scene {
            fig: &fig,
            x: (0.0, 1.0),
            y: (0.0, 1.0),
            bars: Vec::new(),
            curves,
            paths: &[],
            path_color: (0, 0, 0),
            legend: SeriesLabelPosition::UpperRight,
        };
        let s = scene(&rising).with_legend(true).unwrap();
        assert_eq!(
            (s.legend, s.y),
            (SeriesLabelPosition::UpperLeft, (0.0, 1.0))
        );
        // Flat line at the top: both corners busy, so a fitted y range grows.
        let flat = [Curve::new(
            "flat",
            vec![(0.0, 0.99), (1.0, 0.99)],
            (0, 0, 0),
        )];
        let s = scene(&flat).with_legend(true).unwrap();
        assert!(s.y.1 > 1.05, "{:?}", s.y);
        let s = scene(&flat).with_legend(false).unwrap();
        assert_eq!(s.y, (0.0, 1.0));
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
        assert!(msg(density_figure(&path, &fig, &[1.0], 0, &[])).contains("`bins`"));
        assert!(msg(line_figure(&path, &fig, &[])).contains("no curves"));
        assert!(msg(line_figure(&path, &fig, &[nan_curve])).contains("finite"));
        assert!(msg(paths_figure(&path, &fig, &[], (0, 0, 0))).contains("no paths"));
        assert!(msg(paths_figure(&path, &fig, &[vec![]], (0, 0, 0))).contains("finite"));
        let bad = fig.clone().with_x_range(1.0, 1.0);
        let ok = [Curve::new("c", vec![(0.0, 0.0), (1.0, 1.0)], (0, 0, 0))];
        assert!(msg(line_figure(&path, &bad, &ok)).contains("x_range"));
        let bad = fig.clone().with_y_range(0.0, f64::NAN);
        assert!(msg(line_figure(&path, &bad, &ok)).contains("y_range"));
        assert!(msg(density_figure(&path, &bad, &[1.0], 3, &[])).contains("y_range"));
        assert!(msg(line_figure(&dir.join("e.svg"), &fig, &ok)).contains(".png"));
        assert!(!path.exists() && !path.with_extension("svg").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Renders the demo figures (PNG and SVG) into `<temp dir>/plot-demo` for looking at
    /// them: `cargo test -p xtask plot::tests::demo -- --ignored`.
    #[test]
    #[ignore = "writes demo figures for manual inspection"]
    fn demo() {
        let dir = std::env::temp_dir().join("plot-demo");
        demo_density(&dir.join("density.png")).unwrap();
        demo_paths(&dir.join("paths.png")).unwrap();
        demo_lines(&dir.join("lines.png")).unwrap();
        demo_extreme_scales(&dir.join("scales.png")).unwrap();
        eprintln!("demo figures in {}", dir.display());
    }
}
