//! Throughput against threads, one line per configuration, as the report's
//! figures 4.1 and 4.2 draw it. SVG and PNG through plotters' pure-Rust
//! backends; the text is laid out (and, in PNGs, drawn) with the DejaVu Sans
//! font embedded in this program, so no system font is needed.
use super::args::{Format, Mode};
use super::output::Row;
use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 620);

/// One line of a figure.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (threads, operations/s), ascending in threads.
    pub points: Vec<(f64, f64)>,
}

/// With one mode, the file asked for; with several, one file per mode
/// (`out.svg` → `out-rsa-sign-2048.svg`), since their scales differ by orders
/// of magnitude.
pub fn files_per_mode(path: &Path, modes: &[Mode]) -> Vec<(PathBuf, Mode)> {
    if let [mode] = modes {
        return vec![(path.to_path_buf(), *mode)];
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("svg");
    modes
        .iter()
        .map(|m| (path.with_file_name(format!("{stem}-{}.{ext}", m.slug())), *m))
        .collect()
}

/// Series for one mode: one per (configuration, processes), and one per baseline
/// that ran, x being the threads per process.
pub fn series_with_baselines(rows: &[Row], mode: Mode) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    let mut add = |name: String, x: f64, y: f64| match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => series.push(Series {
            name,
            points: vec![(x, y)],
        }),
    };
    for r in rows.iter().filter(|r| r.mode == mode) {
        let p = &r.point;
        let procs = match p.processes {
            1 => String::new(),
            n => format!(", {n} processes"),
        };
        let x = p.threads as f64;
        add(format!("{}{procs}", r.config), x, p.ops_per_s);
        if let Some(v) = p.raw_ops_per_s {
            add(format!("aws-lc-rs in-process (raw){procs}"), x, v);
        }
        if let Some(v) = p.softhsm_ops_per_s {
            add(format!("SoftHSM2{procs}"), x, v);
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn register() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

/// Draws `series` into `path` (.svg or .png).
pub fn draw(path: &Path, title: &str, mode: Mode, x_desc: &str, series: &[Series]) -> Result<()> {
    register()?;
    if series.iter().all(|s| s.points.is_empty()) {
        bail!("nothing to plot for {}", mode.label());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    match Format::of(path)? {
        Format::Svg => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            chart(&root, title, mode, x_desc, series).map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
        Format::Png => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            chart(&root, title, mode, x_desc, series).map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    mode: Mode,
    x_desc: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    // Headroom above the highest point for the legend in the upper left.
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.3;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max * 1.03, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(mode.unit())
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 15))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_valid_svg_and_png_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let series = vec![
            Series {
                name: "hahsm HA slot".into(),
                points: vec![(1.0, 80.0), (4.0, 300.0), (8.0, 420.0)],
            },
            Series {
                name: "aws-lc-rs in-process (raw)".into(),
                points: vec![(1.0, 100.0), (4.0, 390.0), (8.0, 400.0)],
            },
        ];
        let svg = dir.path().join("t.svg");
        draw(&svg, "RSA-2048", Mode::RsaSign(2048), "threads", &series).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("hahsm HA slot") && text.contains("signatures/s"));
        let png = dir.path().join("t.png");
        draw(&png, "RSA-2048", Mode::RsaSign(2048), "threads", &series).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(Format::of(Path::new("x.jpg")).is_err());
    }

    #[test]
    fn several_modes_get_one_file_each() {
        let files = files_per_mode(Path::new("out/b.svg"), &[Mode::RsaSign(2048), Mode::Hmac]);
        assert_eq!(files[0].0, Path::new("out/b-rsa-sign-2048.svg"));
        assert_eq!(files[1].0, Path::new("out/b-hmac.svg"));
    }
}
