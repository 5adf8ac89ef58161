//! The nodes pane: every stored node with its key, trust state and standing on the radio.

use std::time::SystemTime;

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table, TableState};

use super::View;
use super::theme::Theme;
use super::{fit, pane_block};
use crate::app::{App, Pane};
use crate::duration::compact;
use crate::engine::{KeyState, key_base64};
use crate::engine::{NodeView, RadioKey, Snapshot};

pub fn radio_label(r: RadioKey) -> &'static str {
    match r {
        RadioKey::Unknown => "?",
        RadioKey::InRadio => "in radio",
        RadioKey::Missing => "stored",
        RadioKey::Differs => "differs",
        RadioKey::Pushed => "pushed",
        RadioKey::Ignored => "ignored",
        RadioKey::Removed => "removed",
        RadioKey::CannotKeep => "can't keep",
    }
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let (app, snap, now, theme) = (view.app, view.snap, view.now, view.theme);
    let focused = app.focus == Pane::Nodes;
    let rows = app.visible_nodes(snap);
    let title = title(app, snap, rows.len(), area, focused, theme);
    let mut block = pane_block(title, focused, theme);
    if let Some(n) = rows.get(app.nodes.selected) {
        let width = usize::from(area.width.saturating_sub(4));
        block = block.title_bottom(Span::styled(fit(&detail(n, now), width), theme.muted()));
    }
    let wide = area.width >= 110;
    let name_width = usize::from(area.width.saturating_sub(if wide { 72 } else { 58 })).max(8);
    let header = Row::new(
        ["ID", "NAME", "KEY", "TRUST", "RADIO", "SEEN", "PUSH"]
            .into_iter()
            .chain(wide.then_some("HW"))
            .map(|h| Cell::from(Span::styled(h, theme.muted()))),
    );
    // Only the rows that fit are built: with 10k stored keys the table stays cheap to draw.
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = app
        .nodes
        .selected
        .saturating_sub(visible - 1)
        .min(rows.len().saturating_sub(visible));
    let body: Vec<Row<'_>> = rows
        .iter()
        .skip(first)
        .take(visible)
        .map(|n| row(n, now, theme, name_width, wide))
        .collect();
    let widths = column_widths(wide);
    let empty = body.is_empty();
    let table = Table::new(body, widths)
        .header(header)
        .block(block)
        .row_highlight_style(theme.selected(focused))
        .column_spacing(1);
    let mut state = TableState::default()
        .with_selected((!rows.is_empty()).then_some(app.nodes.selected - first));
    frame.render_stateful_widget(table, area, &mut state);
    if empty {
        let inner = Rect::new(area.x + 2, area.y + 2, area.width.saturating_sub(4), 1);
        let text = if snap.nodes.is_empty() {
            "no keys stored yet: they are learned from the radio and the mesh"
        } else {
            "no node matches the filter (Esc clears it)"
        };
        frame.render_widget(Line::from(Span::styled(text, theme.muted())), inner);
    }
}

/// The pane's title: how many nodes, where the selection is when they do not fit, pending
/// keys, the sort and the filter.
fn title<'a>(
    app: &App,
    snap: &Snapshot,
    shown: usize,
    area: Rect,
    focused: bool,
    theme: &Theme,
) -> Line<'a> {
    let pending = snap
        .nodes
        .iter()
        .filter(|n| n.record.pending.is_some())
        .count();
    let mut title = vec![Span::styled(" Nodes ", theme.title(focused))];
    title.push(Span::raw(format!("{} ", snap.nodes.len())));
    if shown > usize::from(area.height.saturating_sub(3)) {
        title.push(Span::styled(
            format!("· {}/{} ", app.nodes.selected + 1, shown),
            theme.muted(),
        ));
    }
    if pending > 0 {
        title.push(Span::styled(
            format!("· {pending} pending "),
            theme.pending(),
        ));
    }
    title.push(Span::styled(
        format!(
            "· sort {} ",
            app.nodes.sort.map_or("attention", |s| s.label())
        ),
        theme.muted(),
    ));
    if !app.nodes.filter.is_empty() {
        title.push(Span::styled(
            format!("· /{} ({} shown) ", app.nodes.filter, shown),
            theme.key(),
        ));
    }
    Line::from(title)
}

/// The table's columns: ID, NAME, KEY, TRUST, RADIO, SEEN, PUSH, and HW when `wide`.
fn column_widths(wide: bool) -> Vec<Constraint> {
    let mut widths = vec![
        Constraint::Length(9),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(4),
    ];
    if wide {
        widths.push(Constraint::Length(12));
    }
    widths
}

/// The selected node in a sentence: where its key came from and since when.
pub fn detail(n: &NodeView, now: SystemTime) -> String {
    let r = &n.record;
    let from = r.source.map_or_else(
        || "an unknown source".to_string(),
        crate::engine::Source::label,
    );
    let first = compact(now.duration_since(r.first_seen).unwrap_or_default());
    if r.trusted.is_none() && r.pending.is_none() {
        format!(" {} · no key · first seen {first} ago ", r.id())
    } else {
        format!(" {} · key from {from} · first seen {first} ago ", r.id())
    }
}

fn hw_name(model: i32) -> String {
    meshtastic::protobufs::HardwareModel::try_from(model)
        .map_or_else(|_| model.to_string(), |m| m.as_str_name().to_string())
}

fn row<'a>(n: &NodeView, now: SystemTime, theme: &Theme, name_width: usize, wide: bool) -> Row<'a> {
    let r = &n.record;
    let state = r.state();
    let key = r.trusted.or(r.pending).map_or_else(
        || "-".to_string(),
        |k| key_base64(&k).chars().take(8).collect(),
    );
    let trust = match state {
        Some(KeyState::Pending) => Span::styled("PENDING", theme.pending()),
        Some(s) => Span::raw(s.as_str()),
        None => Span::styled("no key", theme.muted()),
    };
    let radio_style = match n.radio {
        RadioKey::Differs | RadioKey::CannotKeep => theme.bad(),
        RadioKey::InRadio => theme.good(),
        RadioKey::Pushed | RadioKey::Removed => theme.warn(),
        RadioKey::Unknown | RadioKey::Missing | RadioKey::Ignored => theme.muted(),
    };
    let seen = if r.last_seen == SystemTime::UNIX_EPOCH {
        "-".to_string()
    } else {
        compact(now.duration_since(r.last_seen).unwrap_or_default())
    };
    let mut cells = vec![
        Cell::from(r.id()),
        Cell::from(fit(&r.long_name, name_width)),
        Cell::from(key),
        Cell::from(trust),
        Cell::from(Span::styled(radio_label(n.radio), radio_style)),
        Cell::from(seen),
        Cell::from(r.pushes.to_string()),
    ];
    if wide {
        cells.push(Cell::from(hw_name(r.hw_model)));
    }
    let row = Row::new(cells);
    if state == Some(KeyState::Pending) {
        row.style(theme.pending())
    } else {
        row
    }
}
