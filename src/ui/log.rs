//! The live log pane: tui-logger's view of the log, with the targets list beside it on demand.
//!
//! tui-logger's smart widget titles the pane with an entries-per-second figure taken over its
//! whole buffer (first to last entry), which reads "11500.0/s" on an idle link after a startup
//! burst and never decays; this pane composes the same parts without it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders};
use tui_logger::{TuiLoggerLevelOutput, TuiLoggerTargetWidget, TuiLoggerWidget, TuiWidgetState};

use super::theme::Theme;

/// Width of the targets list: the longest keysync target (`keysync::engine`) and its levels.
const TARGETS_WIDTH: u16 = 30;

/// Draws the log pane; `show_targets` adds the list of targets and their levels on the left.
pub fn draw(
    frame: &mut Frame<'_>,
    area: Rect,
    focused: bool,
    show_targets: bool,
    state: &TuiWidgetState,
    theme: &Theme,
) {
    let block = |title: &'static str| {
        Block::default()
            .borders(Borders::ALL)
            .border_style(theme.border(focused))
            .title(Line::from(Span::styled(title, theme.title(focused))))
    };
    let log_area = if show_targets {
        let [targets, log] =
            Layout::horizontal([Constraint::Length(TARGETS_WIDTH), Constraint::Min(10)])
                .areas(area);
        frame.render_widget(
            TuiLoggerTargetWidget::default()
                .block(block(" targets ←→ level "))
                .state(state),
            targets,
        );
        log
    } else {
        area
    };
    frame.render_widget(
        TuiLoggerWidget::default()
            .block(block(" Log "))
            .style_error(theme.bad())
            .style_warn(theme.warn())
            .style_info(theme.text())
            .style_debug(theme.muted())
            .style_trace(theme.muted())
            .output_separator(' ')
            .output_timestamp(Some("%H:%M:%S".into()))
            .output_level(Some(TuiLoggerLevelOutput::Abbreviated))
            .output_target(false)
            .output_file(false)
            .output_line(false)
            .state(state),
        log_area,
    );
}
