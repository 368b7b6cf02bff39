//! The picture: RR and CRR against the number of Services (log scale), one line per mode, as SVG.
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::{Cell, Mode, Row};

const COLORS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(120, 120, 120),
    RGBColor(0, 114, 178),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
];

/// (N, rate) of `mode` for one metric: the "last" probe (or the only row), skipping what did not run.
fn series(rows: &[Row], mode: Mode, crr: bool) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.mode == mode && (r.probe == "last" || r.probe == "-"))
        .filter_map(|r| match if crr { &r.crr } else { &r.rr } {
            Cell::Done(s) => Some((r.n as f64, s.run.rate)),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

pub fn draw(rows: &[Row], path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, 2));
    let max_n = rows.iter().map(|r| r.n).max().unwrap_or(10).max(10) as f64;
    for (panel, crr) in panels.iter().zip([false, true]) {
        let top = Mode::ALL.iter().flat_map(|m| series(rows, *m, crr)).map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let title = if crr { "CRR: new connections/s" } else { "RR: round trips/s" };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((5.0..max_n * 2.0).log_scale(), 0.0..top)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("Services")
            .y_desc("ops/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{:.0}k", y / 1e3))
            .draw()
            .map_err(|x| e(&x))?;
        for (mode, color) in Mode::ALL.iter().zip(COLORS) {
            let pts = series(rows, *mode, crr);
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(mode.label())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
