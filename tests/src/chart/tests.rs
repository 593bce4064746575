use std::ops::Range;

use super::*;

fn spread(min: f64, median: f64, max: f64) -> Spread {
    Spread { median, min, max }
}

/// The latest full run in docs/performance.md, as ratios to plain routing, with
/// spreads of the size it reports.
fn sample_chart() -> Chart {
    let rows = [
        ("plain routing", RowKind::Reference),
        (
            "plain routing, flows steered (RPS on ports)",
            RowKind::Other,
        ),
        ("kernel VXLAN", RowKind::Other),
        ("fan-xdp, XDP decap", RowKind::FanXdp),
        ("fan-xdp, TC decap + direct delivery", RowKind::FanXdp),
        (
            "fan-xdp, TC decap + direct delivery, --steer-flows",
            RowKind::FanXdp,
        ),
        ("fan-xdp, TC decap via the stack", RowKind::FanXdp),
    ];
    let panel = |title: &str, target, medians: [f64; 7]| Panel {
        title: title.to_string(),
        target,
        ratios: medians
            .iter()
            .map(|&m| spread(m * 0.95, m, m * 1.04))
            .collect(),
    };
    Chart {
        heading: "fan-xdp bench: each path as a ratio to plain routing, 5 runs".into(),
        footnote: "Bar: the median (blue: fan-xdp; orange: the kernel's other ways). \
                   Whisker: the runs' min-max, over plain routing's median. \
                   Grey line: plain routing (1.00x). Dashed red: fan-xdp's target."
            .into(),
        rows: rows
            .iter()
            .map(|(label, kind)| Row {
                label: label.to_string(),
                kind: *kind,
            })
            .collect(),
        panels: vec![
            panel(
                "TCP, 1 stream",
                Some(1.05),
                [1.0, 1.07, 0.91, 0.23, 1.06, 1.05, 0.36],
            ),
            panel(
                "TCP, 4 streams",
                Some(1.05),
                [1.0, 1.21, 0.91, 0.19, 1.01, 1.28, 0.30],
            ),
            panel(
                "UDP 64 B, packets/s",
                None,
                [1.0, 1.02, 0.70, 0.82, 1.32, 1.32, 0.95],
            ),
            panel(
                "TCP request/response, per s",
                Some(1.2),
                [1.0, 0.99, 0.81, 0.90, 1.18, 0.24, 0.94],
            ),
        ],
    }
}

/// The y ranges (top, bottom) of the runs of bar-coloured pixels in
/// the column `x`, between the pixel rows `ys`.
fn bars_in_column(rgb: &[u8], width: u32, x: u32, ys: Range<u32>) -> Vec<(u32, u32)> {
    let is_bar = |y: u32| {
        let at = ((y * width + x) * 3) as usize;
        let pixel = RGBColor(rgb[at], rgb[at + 1], rgb[at + 2]);
        [REFERENCE_COLOUR, FAN_XDP_COLOUR, OTHER_COLOUR].contains(&pixel)
    };
    let mut bars: Vec<(u32, u32)> = Vec::new();
    for y in ys.filter(|&y| is_bar(y)) {
        match bars.last_mut() {
            Some((_, bottom)) if *bottom + 1 == y => *bottom = y,
            _ => bars.push((y, y)),
        }
    }
    bars
}

#[test]
fn every_row_has_its_bar_in_every_panel_and_no_row_is_empty() {
    register_font().unwrap();
    let chart = sample_chart();
    let (width, height) = chart.size();
    let mut rgb = vec![0u8; (width * height * 3) as usize];
    chart.draw_rgb(&mut rgb).unwrap();
    // For a person to look at.
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chart-sample.png");
    chart.write_png(&file).unwrap();

    let panel_top = MARGIN + HEADING_HEIGHT;
    let panels_bottom = height - MARGIN - FOOTNOTE_HEIGHT;
    let rows = chart.rows.len();
    for panel in 0..chart.panels.len() as u32 {
        // Right of the panel's zero, where every bar is, left of the labels inside bars.
        let x = MARGIN + LABEL_WIDTH + panel * PANEL_WIDTH + 3;
        let bars = bars_in_column(&rgb, width, x, panel_top..panels_bottom);
        assert_eq!(bars.len(), rows, "panel {panel}: {bars:?}");
        let period = f64::from(bars[rows - 1].0 - bars[0].0) / (rows - 1) as f64;
        for pair in bars.windows(2) {
            let step = f64::from(pair[1].0 - pair[0].0);
            assert!(
                (step - period).abs() <= 1.5,
                "panel {panel}: uneven rows {bars:?}"
            );
        }
        // No empty row above the first bar (under the caption) nor
        // below the last (above the x axis): only the bars' margins.
        let axis = (bars[rows - 1].1..panels_bottom)
            .find(|&y| {
                let at = ((y * width + x) * 3) as usize;
                rgb[at..at + 3].iter().all(|&c| c < 60)
            })
            .expect("the x axis");
        assert!(
            f64::from(axis - bars[rows - 1].1) < period / 2.0,
            "panel {panel}: {} px between the last bar and the axis, rows are {period} px",
            axis - bars[rows - 1].1
        );
        assert!(
            f64::from(bars[0].0 - panel_top) < f64::from(CAPTION_HEIGHT) + period / 2.0,
            "panel {panel}: the first bar starts {} px below the panel's top, rows are {period} px",
            bars[0].0 - panel_top
        );
    }
}

#[test]
fn a_panel_without_a_ratio_per_row_is_refused() {
    let mut chart = sample_chart();
    chart.panels[2].ratios.pop();
    let size = chart.size();
    let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
    assert!(chart.draw_rgb(&mut rgb).is_err());
}
