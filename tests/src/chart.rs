//! The bench's chart: one panel per measured quantity, one row per path,
//! each bar a path's median as a ratio to plain routing with the min-max of
//! its runs as a whisker, the reference (1.00x) and the target marked. One
//! PNG to read at a glance.

use anyhow::{Context as _, Result, ensure};
use plotters::{
    coord::Shift,
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::measure::Spread;

/// What a row is, for its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// Plain routing, the 1.00x every ratio is taken to.
    Reference,
    /// A fan-xdp path.
    FanXdp,
    /// Another way of joining the slices (the kernel's tunnels).
    Other,
}

pub struct Row {
    pub label: String,
    pub kind: RowKind,
}

/// One quantity, as ratios to plain routing, one per row.
pub struct Panel {
    pub title: String,
    /// The ratio fan-xdp is meant to reach, drawn as a dashed line.
    pub target: Option<f64>,
    pub ratios: Vec<Spread>,
}

pub struct Chart {
    pub heading: String,
    pub footnote: String,
    pub rows: Vec<Row>,
    pub panels: Vec<Panel>,
}

/// The row labels' column, left of the first panel.
const LABEL_WIDTH: u32 = 330;
const PANEL_WIDTH: u32 = 260;
const ROW_HEIGHT: u32 = 40;
const HEADING_HEIGHT: u32 = 40;
const CAPTION_HEIGHT: u32 = 34;
const AXIS_HEIGHT: u32 = 34;
const FOOTNOTE_HEIGHT: u32 = 30;
const MARGIN: u32 = 10;
/// Half the height of a whisker's end, in pixels.
const WHISKER_CAP: i32 = 6;
/// The shortest bar (as a ratio) that holds its own label.
const LABEL_INSIDE_FROM: f64 = 0.45;

const REFERENCE_COLOUR: RGBColor = RGBColor(150, 150, 150);
const FAN_XDP_COLOUR: RGBColor = RGBColor(40, 110, 190);
const OTHER_COLOUR: RGBColor = RGBColor(230, 150, 60);
const TARGET_COLOUR: RGBColor = RGBColor(200, 30, 30);

impl RowKind {
    fn colour(self) -> RGBColor {
        match self {
            RowKind::Reference => REFERENCE_COLOUR,
            RowKind::FanXdp => FAN_XDP_COLOUR,
            RowKind::Other => OTHER_COLOUR,
        }
    }
}

impl Chart {
    /// The picture's (width, height): every row and panel, nothing more.
    pub fn size(&self) -> (u32, u32) {
        (
            LABEL_WIDTH + PANEL_WIDTH * self.panels.len() as u32 + 2 * MARGIN,
            HEADING_HEIGHT
                + CAPTION_HEIGHT
                + ROW_HEIGHT * self.rows.len() as u32
                + AXIS_HEIGHT
                + FOOTNOTE_HEIGHT
                + 2 * MARGIN,
        )
    }

    /// Writes the chart as a PNG (the font must be registered: [`register_font`]).
    pub fn write_png(&self, file: &std::path::Path) -> Result<()> {
        let root = BitMapBackend::new(file, self.size()).into_drawing_area();
        self.draw(&root)?;
        root.present()
            .with_context(|| format!("writing {}", file.display()))
    }

    /// Draws into `rgb`, a buffer of [`Chart::size`] pixels, 3 bytes each.
    pub fn draw_rgb(&self, rgb: &mut [u8]) -> Result<()> {
        let root = BitMapBackend::with_buffer(rgb, self.size()).into_drawing_area();
        self.draw(&root)?;
        root.present()?;
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        ensure!(
            !self.rows.is_empty() && !self.panels.is_empty(),
            "a chart needs rows and panels"
        );
        for panel in &self.panels {
            ensure!(
                panel.ratios.len() == self.rows.len(),
                "panel {} has {} ratios for {} rows",
                panel.title,
                panel.ratios.len(),
                self.rows.len()
            );
        }
        root.fill(&WHITE)?;
        let area = root.margin(MARGIN, MARGIN, MARGIN, MARGIN);
        let (heading, rest) = area.split_vertically(HEADING_HEIGHT);
        heading.draw_text(
            &self.heading,
            &("sans-serif", 20).into_text_style(&heading),
            (0, 8),
        )?;
        let (body, footnote) = rest
            .split_vertically(CAPTION_HEIGHT + ROW_HEIGHT * self.rows.len() as u32 + AXIS_HEIGHT);
        footnote.draw_text(
            &self.footnote,
            &("sans-serif", 14).into_text_style(&footnote),
            (0, 10),
        )?;
        let (first, others) = body.split_horizontally(LABEL_WIDTH + PANEL_WIDTH);
        let x_max = self.x_max();
        self.draw_panel(&first, &self.panels[0], LABEL_WIDTH, x_max)?;
        if self.panels.len() > 1 {
            let areas = others.split_evenly((1, self.panels.len() - 1));
            for (area, panel) in areas.iter().zip(&self.panels[1..]) {
                self.draw_panel(area, panel, 0, x_max)?;
            }
        }
        Ok(())
    }

    /// One x scale for every panel, so that bars compare across panels:
    /// room for the longest whisker and its label, and for 1.3x at least.
    fn x_max(&self) -> f64 {
        self.panels
            .iter()
            .flat_map(|p| p.ratios.iter().map(|r| r.max.max(r.median)).chain(p.target))
            .filter(|v| v.is_finite())
            .fold(1.3, f64::max)
            * 1.3
    }

    /// Row `i` (0 is the top one) in the panels' segmented y coordinate,
    /// which counts from the bottom.
    fn segment(&self, i: usize) -> i32 {
        (self.rows.len() - 1 - i) as i32
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        panel: &Panel,
        label_width: u32,
        x_max: f64,
    ) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let rows = self.rows.len() as i32;
        let title = match panel.target {
            Some(target) => format!("{} (target {target:.2}x)", panel.title),
            None => panel.title.clone(),
        };
        // An integer range is inclusive in plotters' discrete coordinates:
        // 0..rows - 1 holds exactly one segment per row, none empty.
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin_right(12)
            .x_label_area_size(AXIS_HEIGHT)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0.0..x_max, (0..rows - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_labels(4)
            .max_light_lines(1)
            .x_label_formatter(&|v| format!("{v:.1}x"))
            .y_label_style(("sans-serif", 15))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(s) => self
                    .rows
                    .get((rows - 1 - s) as usize)
                    .map(|r| r.label.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        let valid = || {
            panel
                .ratios
                .iter()
                .enumerate()
                .filter(|(_, r)| r.median.is_finite())
        };
        chart.draw_series(valid().map(|(i, r)| {
            let s = self.segment(i);
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(s)),
                    (r.median, SegmentValue::Exact(s + 1)),
                ],
                self.rows[i].kind.colour().filled(),
            );
            bar.set_margin(7, 7, 0, 0);
            bar
        }))?;
        chart.draw_series(valid().map(|(i, r)| {
            PathElement::new(
                vec![
                    (r.min, SegmentValue::CenterOf(self.segment(i))),
                    (r.max, SegmentValue::CenterOf(self.segment(i))),
                ],
                BLACK.stroke_width(2),
            )
        }))?;
        for end in [|r: &Spread| r.min, |r: &Spread| r.max] {
            chart.draw_series(valid().map(|(i, r)| {
                EmptyElement::at((end(r), SegmentValue::CenterOf(self.segment(i))))
                    + PathElement::new(
                        vec![(0, -WHISKER_CAP), (0, WHISKER_CAP)],
                        BLACK.stroke_width(2),
                    )
            }))?;
        }
        chart.draw_series(valid().map(|(i, r)| {
            let at = SegmentValue::CenterOf(self.segment(i));
            let text = format!("{:.2}x", r.median);
            let style = TextStyle::from(("sans-serif", 14).into_font())
                .pos(Pos::new(HPos::Left, VPos::Center));
            // Inside a bar long enough to hold it, clear of the whisker
            // and the target line; else right of the whisker.
            if r.median >= LABEL_INSIDE_FROM {
                Text::new(text, (x_max * 0.03, at), style.color(&WHITE))
            } else {
                Text::new(text, (r.max.max(r.median) + x_max * 0.02, at), style)
            }
        }))?;
        let vertical = |x: f64| vec![(x, SegmentValue::Exact(0)), (x, SegmentValue::Exact(rows))];
        chart.draw_series(std::iter::once(PathElement::new(
            vertical(1.0),
            REFERENCE_COLOUR.stroke_width(1),
        )))?;
        if let Some(target) = panel.target {
            chart.draw_series(std::iter::once(DashedPathElement::new(
                vertical(target),
                6,
                4,
                TARGET_COLOUR.stroke_width(2),
            )))?;
        }
        Ok(())
    }
}

/// Registers DejaVu Sans as the charts' "sans-serif" (plotters draws text
/// with a font it is given; fonts-dejavu-core is installed by setup).
pub fn register_font() -> Result<()> {
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("DejaVu Sans for the chart (install fonts-dejavu-core: cargo xtask setup)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("registering the chart font"))
}

#[cfg(test)]
mod tests;
