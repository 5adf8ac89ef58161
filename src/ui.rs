//! Pure render functions: the app state, the engine's snapshot and `now` in, a frame out.
//! Nothing here reads a clock, a file or a socket.

pub mod link;
pub mod log;
pub mod nodes;
pub mod sync;
pub mod theme;

use std::time::{Duration, SystemTime};

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::app::{App, ContactView, HistoryView, KEYMAP, Overlay, Pane, Scope, hints};
use crate::duration::compact;
use crate::engine::Snapshot;
use theme::{LinkKind, Theme};

/// The smallest terminal the layout is made for.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

/// What every part of the screen is drawn from.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub app: &'a App,
    pub snap: &'a Snapshot,
    pub now: SystemTime,
    pub theme: &'a Theme,
}

/// "12s ago", "3m05s ago"; "just now" for times at or after `now`.
pub fn ago(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(d) if d >= Duration::from_secs(1) => format!("{} ago", compact(d)),
        _ => "just now".into(),
    }
}

/// `s` made [`printable`](crate::engine::printable) and cut to `width` characters, with
/// `…` where it was cut: every name on screen goes through here.
pub fn fit(s: &str, width: usize) -> String {
    let s = crate::engine::printable(s);
    if s.chars().count() <= width {
        return s.into_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cuts a path from the left, keeping its end: `…/data/keysync.db`.
fn fit_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - width.saturating_sub(1)).collect();
    format!("…{tail}")
}

/// A bordered pane whose border and title show focus.
pub fn pane_block<'a>(title: Line<'a>, focused: bool, theme: &Theme) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(theme.border(focused))
        .title(title)
}

/// Renders the live log into its area; `bool` says whether the pane has focus.
pub type LogPane<'a> = &'a dyn Fn(&mut Frame<'_>, Rect, bool);

/// The areas of the screen.
struct Areas {
    header: Rect,
    nodes: Rect,
    sync: Rect,
    link: Rect,
    log: Rect,
    footer: Rect,
}

fn areas(area: Rect) -> Areas {
    let body = area.height.saturating_sub(2);
    let extra = body.saturating_sub(MIN_HEIGHT - 2);
    let mid = 8 + extra / 3;
    let log = 6 + extra / 3;
    let [header, nodes, middle, log, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(body.saturating_sub(mid + log)),
        Constraint::Length(mid),
        Constraint::Length(log),
        Constraint::Length(1),
    ])
    .areas(area);
    let [sync, link] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    Areas {
        header,
        nodes,
        sync,
        link,
        log,
        footer,
    }
}

/// Draws the whole screen. `log` renders the live log pane (tui-logger) into its area; tests
/// pass `None` and get an empty pane.
pub fn draw(
    frame: &mut Frame<'_>,
    app: &App,
    snapshot: &Snapshot,
    now: SystemTime,
    theme: &Theme,
    log: Option<LogPane<'_>>,
) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        draw_too_small(frame, area, theme);
        return;
    }
    let a = areas(area);
    let view = View {
        app,
        snap: snapshot,
        now,
        theme,
    };
    draw_header(frame, a.header, &view);
    nodes::draw(frame, a.nodes, &view);
    sync::draw(frame, a.sync, &view);
    link::draw(frame, a.link, &view);
    let focused = app.focus == Pane::Log;
    match log {
        Some(render) => render(frame, a.log, focused),
        None => frame.render_widget(
            pane_block(
                Line::from(Span::styled(" Log ", theme.title(focused))),
                focused,
                theme,
            ),
            a.log,
        ),
    }
    draw_footer(frame, a.footer, &view);
    match &app.overlay {
        Some(Overlay::History(history)) => draw_history(frame, area, history, &view),
        Some(Overlay::Contact(contact)) => draw_contact(frame, area, contact, theme),
        Some(Overlay::Help) => draw_help(frame, area, theme),
        // Drawn in the footer.
        Some(Overlay::Confirm(_) | Overlay::Filter) | None => {}
    }
}

fn draw_too_small(frame: &mut Frame<'_>, area: Rect, theme: &Theme) {
    let text = vec![
        Line::from(Span::styled("terminal too small", theme.bad())),
        Line::from(format!(
            "{}×{} here; keysync needs at least {MIN_WIDTH}×{MIN_HEIGHT}",
            area.width, area.height
        )),
        Line::from("enlarge the window, or run keysync --headless"),
        Line::from(Span::styled("q quits", theme.muted())),
    ];
    let height = u16::try_from(text.len()).unwrap_or(u16::MAX);
    let top = area.height.saturating_sub(height) / 2;
    let rect = Rect::new(area.x, area.y + top, area.width, height.min(area.height));
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        rect,
    );
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let (app, snap, now, theme) = (view.app, view.snap, view.now, view.theme);
    let link = &snap.link;
    let kind = LinkKind::of(&link.state);
    let since = now.duration_since(link.since).unwrap_or_default();
    let state = format!("{} {}", link.state.label().to_uppercase(), compact(since));
    let mut spans = vec![
        Span::styled(" keysync ", theme.header()),
        Span::raw(" "),
        Span::raw(link.host.clone()),
        Span::raw(" "),
        Span::styled(state, theme.link(kind)),
    ];
    let used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
    let right = match &app.demo {
        Some(demo) => format!("  DEMO {demo}"),
        None => String::new(),
    };
    let room = usize::from(area.width).saturating_sub(used + right.chars().count() + 6);
    let db = fit_left(&snap.db_path.display().to_string(), room.max(8));
    spans.push(Span::styled(format!("  db {db}"), theme.muted()));
    if !right.is_empty() {
        spans.push(Span::styled(right, theme.warn()));
    }
    if let Some(fault) = &snap.store_error {
        spans.push(Span::styled(
            format!("  store: {}", store_fault(fault)),
            theme.bad(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A store fault in the few words the header has room for; the log has the whole message.
fn store_fault(fault: &crate::engine::StoreCallError) -> String {
    use crate::engine::StoreCallError as F;
    use crate::engine::StoreError as E;
    match fault {
        F::Store(E::Locked { .. }) => "locked by another process".into(),
        F::Store(E::DiskFull { .. }) => "disk full, nothing lost".into(),
        F::Store(E::ReadOnly { .. }) => "read-only".into(),
        F::Store(E::Corrupt { .. } | E::NotADatabase { .. }) => "corrupt, left untouched".into(),
        F::Store(E::Missing { .. }) => "missing".into(),
        F::Store(other) => other.to_string(),
        F::Join(_) => "its task failed (see the log)".into(),
    }
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let View {
        app, now, theme, ..
    } = *view;
    let width = usize::from(area.width);
    let line = if let Some(confirm) = app.confirm() {
        Line::from(Span::styled(fit(&confirm.question, width), theme.pending()))
    } else if app.editing_filter() {
        Line::from(vec![
            Span::styled("filter: ", theme.key()),
            Span::raw(app.nodes.filter.clone()),
            Span::styled("▏  Enter keep · Esc clear", theme.muted()),
        ])
    } else if let Some((at, text)) = app
        .message
        .as_ref()
        .filter(|(at, _)| now.duration_since(*at).unwrap_or_default() < Duration::from_secs(8))
    {
        let _ = at;
        Line::from(Span::styled(fit(text, width), theme.warn()))
    } else {
        let mut spans = Vec::new();
        let mut used = 0;
        for b in hints(app.focus) {
            let piece = b.label.chars().count() + b.short.chars().count() + 3;
            if used + piece > width {
                break;
            }
            used += piece;
            spans.push(Span::styled(b.label, theme.key()));
            spans.push(Span::raw(format!(" {}  ", b.short)));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// A centred rectangle of at most `w`×`h` inside `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// Width of the key column in the help overlay.
const HELP_KEY_WIDTH: usize = 10;

/// One help entry in a column `width` wide: the key, then its help wrapped at word boundaries
/// with a hanging indent, so that nothing runs into the next column.
fn help_entry<'a>(key: &str, help: &str, width: usize, theme: &Theme) -> Vec<Line<'a>> {
    let room = width.saturating_sub(HELP_KEY_WIDTH).max(8);
    let mut rows: Vec<String> = vec![String::new()];
    for word in help.split(' ') {
        let current = rows.last().map_or(0, |r| r.chars().count());
        if current > 0 && current + 1 + word.chars().count() > room {
            rows.push(String::new());
        }
        if let Some(row) = rows.last_mut() {
            if !row.is_empty() {
                row.push(' ');
            }
            row.push_str(word);
        }
    }
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let key = if i == 0 { key } else { "" };
            Line::from(vec![
                Span::styled(format!("{key:<HELP_KEY_WIDTH$}"), theme.key()),
                Span::raw(row),
            ])
        })
        .collect()
}

/// The help overlay's sections (global keys, then each pane's), for columns `width` wide.
fn help_sections<'a>(width: usize, theme: &Theme) -> Vec<Vec<Line<'a>>> {
    // Bindings with an empty help text are the second key of a pair shown on one line.
    let mut sections: Vec<Vec<Line<'_>>> = Vec::new();
    let mut last_scope = None;
    for b in KEYMAP.iter().filter(|b| !b.hidden) {
        if last_scope != Some(b.scope) {
            let heading = match b.scope {
                Scope::Global => "Anywhere".to_string(),
                Scope::In(p) => format!("In the {} pane", p.title()),
            };
            sections.push(vec![Line::from(Span::styled(heading, theme.title(false)))]);
            last_scope = Some(b.scope);
        }
        if let Some(section) = sections.last_mut() {
            section.extend(help_entry(b.label, b.help, width, theme));
        }
    }
    if let Some(first) = sections.first_mut() {
        first.extend(help_entry("Ctrl-C", "quit", width, theme));
    }
    sections
}

fn draw_help(frame: &mut Frame<'_>, area: Rect, theme: &Theme) {
    const GAP: u16 = 2;
    let footer = Line::from(Span::styled("any key closes this help", theme.muted()));
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(theme.border(true))
        .title(Span::styled(" Keys ", theme.title(true)));
    let outer = area.width.min(50);
    let sections = help_sections(usize::from(outer.saturating_sub(2)), theme);
    let total: usize = sections.iter().map(Vec::len).sum();
    if total + 3 <= usize::from(area.height) {
        let mut lines: Vec<Line<'_>> = sections.into_iter().flatten().collect();
        lines.push(footer);
        let height = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
        let rect = centered(area, outer, height);
        frame.render_widget(Clear, rect);
        frame.render_widget(Paragraph::new(lines).block(block), rect);
        return;
    }
    // Too tall for the screen: the global keys on the left, the panes' on the right, each
    // wrapped to its column.
    let outer = area.width.min(80);
    let column = outer.saturating_sub(2 + GAP) / 2;
    let mut left: Vec<Line<'_>> = Vec::new();
    let mut right: Vec<Line<'_>> = Vec::new();
    for (i, section) in help_sections(usize::from(column), theme)
        .into_iter()
        .enumerate()
    {
        if i == 0 {
            left.extend(section);
        } else {
            right.extend(section);
        }
    }
    left.push(Line::raw(""));
    left.push(footer);
    let height = u16::try_from(left.len().max(right.len()) + 2).unwrap_or(u16::MAX);
    let rect = centered(area, outer, height);
    frame.render_widget(Clear, rect);
    let inner = block.inner(rect);
    frame.render_widget(block, rect);
    let [l, _, r] = Layout::horizontal([
        Constraint::Length(column),
        Constraint::Length(GAP),
        Constraint::Length(column),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(left), l);
    frame.render_widget(Paragraph::new(right), r);
}

fn draw_history(frame: &mut Frame<'_>, area: Rect, history: &HistoryView, view: &View<'_>) {
    let View { now, theme, .. } = *view;
    let mut lines = Vec::new();
    match &history.events {
        Err(e) => lines.push(Line::from(Span::styled(e.clone(), theme.bad()))),
        Ok(events) if events.is_empty() => lines.push(Line::from("no key recorded for this node")),
        Ok(events) => {
            for e in events {
                let style = match e.event.as_str() {
                    "changed" => theme.pending(),
                    "rejected" => theme.bad(),
                    "accepted" | "first-use" => theme.good(),
                    _ => Style::default(),
                };
                lines.push(Line::from(vec![
                    Span::styled(format!("{:>12} ", ago(e.at, now)), theme.muted()),
                    Span::styled(format!("{:<9} ", e.event), style),
                    Span::raw(format!("{} ", crate::engine::key_fingerprint(&e.key))),
                    Span::styled(fit(&crate::engine::key_base64(&e.key), 20), theme.muted()),
                    Span::raw(format!(" via {}", e.source)),
                ]));
            }
        }
    }
    lines.push(Line::from(Span::styled("Esc closes", theme.muted())));
    let height = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
    let rect = centered(area, 76, height.min(area.height.saturating_sub(2)));
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(theme.border(true))
                .title(Span::styled(
                    format!(" Key history · {} ", history.title),
                    theme.title(true),
                )),
        ),
        rect,
    );
}

/// A node's contact over the whole screen: the QR code on the left, what it holds on the
/// right. A code that does not fit is not drawn cut (a phone would read a wrong contact or
/// nothing): the overlay says so and gives the URL and the command that prints the code.
fn draw_contact(frame: &mut Frame<'_>, area: Rect, contact: &ContactView, theme: &Theme) {
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(theme.border(true))
        .title(Span::styled(
            format!(" Contact · {} ", fit(&contact.title, 50)),
            theme.title(true),
        ))
        .title_bottom(Span::styled(" Esc closes ", theme.muted()));
    let inner = block.inner(area);
    frame.render_widget(Clear, area);
    frame.render_widget(block, area);
    let id = crate::engine::node_id(contact.num);
    let command = format!("keysync keys qr {id}");
    let fits = contact.code.as_ref().ok().filter(|code| {
        code.width + 2 <= usize::from(inner.width) && code.lines.len() <= usize::from(inner.height)
    });
    let Some(code) = fits else {
        let why = match &contact.code {
            Ok(code) => format!(
                "Its QR code needs {}×{} cells and this terminal gives {}×{}: make it larger, or run",
                code.width + 2,
                code.lines.len() + 2,
                area.width,
                area.height
            ),
            Err(e) => format!("No QR code for this contact ({e}). Run"),
        };
        let lines = vec![
            Line::from(Span::styled(why, theme.warn())),
            Line::from(Span::styled(command, theme.key())),
            Line::default(),
            Line::from("Contact URL:"),
            Line::from(contact.url.clone()),
        ];
        frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
        return;
    };
    let width = u16::try_from(code.width).unwrap_or(u16::MAX);
    let [qr, _, text] = Layout::horizontal([
        Constraint::Length(width),
        Constraint::Length(2),
        Constraint::Min(0),
    ])
    .areas(inner);
    let top = (inner.height - u16::try_from(code.lines.len()).unwrap_or(0)) / 2;
    let qr = Rect::new(qr.x, qr.y + top, qr.width, qr.height - top);
    let lines: Vec<Line<'_>> = code
        .lines
        .iter()
        .map(|l| Line::from(Span::styled(l.as_str(), theme.qr())))
        .collect();
    frame.render_widget(Paragraph::new(lines), qr);
    let about = vec![
        Line::from(Span::styled(id, theme.key())),
        Line::from(
            contact
                .title
                .split_once(' ')
                .map_or("", |(_, n)| n)
                .to_owned(),
        ),
        Line::default(),
        Line::from("Scan it with the Meshtastic app"),
        Line::from("(Add contact / QR scanner):"),
        Line::from("the node and its public key"),
        Line::from("are added to the phone's radio."),
        Line::default(),
        Line::from(Span::styled("The same from a shell:", theme.muted())),
        Line::from(Span::styled(command, theme.muted())),
        Line::from(Span::styled(
            "keysync keys export --format urls",
            theme.muted(),
        )),
    ];
    frame.render_widget(Paragraph::new(about).wrap(Wrap { trim: false }), text);
}
