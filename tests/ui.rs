//! The monitor's screens, rendered into ratatui's TestBackend from a fixed snapshot at a fixed
//! `now`, and compared with insta snapshots.

mod common;

use common::fixture::{self, now};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use keysync::app::{App, HistoryView, Input, Pane};
use keysync::engine::KeyEvent as KeyHistoryEvent;
use keysync::engine::Snapshot;
use keysync::engine::{Outcome, Trigger};
use keysync::ui::{self, theme::Theme};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn render(app: &App, snap: &Snapshot, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    terminal
        .draw(|f| ui::draw(f, app, snap, now(), &Theme { no_color: true }, None))
        .expect("draws");
    terminal.backend().to_string()
}

fn key(app: &mut App, snap: &Snapshot, code: KeyCode) {
    let _ = app.update(
        Input::Key(KeyEvent::new(code, KeyModifiers::NONE)),
        snap,
        now(),
    );
}

#[test]
fn whole_screen_at_80x24() {
    let snap = fixture::snapshot();
    insta::assert_snapshot!(render(&App::default(), &snap, 80, 24));
}

#[test]
fn whole_screen_at_120x40() {
    let snap = fixture::snapshot();
    insta::assert_snapshot!(render(&App::default(), &snap, 120, 40));
}

#[test]
fn too_small_terminal_says_so() {
    let snap = fixture::snapshot();
    let screen = render(&App::default(), &snap, 70, 20);
    assert!(screen.contains("terminal too small"));
    insta::assert_snapshot!(screen);
}

#[test]
fn each_sync_outcome_has_its_badge() {
    for (outcome, trigger, pushed, frames, reason) in [
        (
            Outcome::Skipped,
            Trigger::Check,
            0,
            0,
            "fingerprint unchanged, last full sync 12m00s ago < TTL 30m00s",
        ),
        (
            Outcome::Synced,
            Trigger::Check,
            0,
            1,
            "last full sync 30m00s ago ≥ TTL 30m00s",
        ),
        (
            Outcome::Forced,
            Trigger::Reconnect,
            12,
            12,
            "forced: reconnect; node list from the handshake",
        ),
        (
            Outcome::Failed,
            Trigger::Operator,
            3,
            4,
            "forced: operator request",
        ),
    ] {
        let mut snap = fixture::snapshot();
        let r = fixture::report(outcome, trigger, 42, pushed, frames, reason);
        snap.sync.history.push_back(r.clone());
        snap.sync.last = Some(r);
        let screen = render(&App::default(), &snap, 80, 24);
        let badge = outcome.label().to_uppercase();
        assert!(
            screen.contains(&format!(" {badge} ")),
            "{badge} missing:\n{screen}"
        );
        insta::assert_snapshot!(format!("sync_{}", outcome.label()), screen);
    }
}

#[test]
fn a_running_sync_shows_while_it_runs() {
    let screen = render(&App::default(), &fixture::running(), 80, 24);
    assert!(screen.contains("SYNCING"), "{screen}");
}

#[test]
fn link_pane_states_drops_that_followed_a_sync() {
    let snap = fixture::snapshot();
    let screen = render(&App::default(), &snap, 120, 40);
    assert!(
        screen.contains("1 of 2 drops came ≤30s after a sync"),
        "{screen}"
    );
}

#[test]
fn pending_key_confirmation_line() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    key(&mut app, &snap, KeyCode::Char('a'));
    let screen = render(&app, &snap, 80, 24);
    assert!(screen.contains("accept new key"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn help_overlay_lists_the_keymap() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    key(&mut app, &snap, KeyCode::Char('?'));
    insta::assert_snapshot!(render(&app, &snap, 120, 40));
}

#[test]
fn help_overlay_at_80x24_keeps_its_columns_apart_and_says_force_sync() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    key(&mut app, &snap, KeyCode::Char('?'));
    let screen = render(&app, &snap, 80, 24);
    // Each help text is there, whole or wrapped, and never runs into the next column.
    let words: Vec<&str> = screen
        .split(|c: char| c.is_whitespace() || c == '│' || c == '"')
        .collect();
    for b in keysync::app::KEYMAP.iter().filter(|b| !b.help.is_empty()) {
        for word in b.help.split(' ') {
            assert!(
                words.contains(&word),
                "help lacks {word:?} of {:?}:\n{screen}",
                b.help
            );
        }
    }
    for run_together in ["syncsPgUp", "cleanlyr", "filterEnter"] {
        assert!(!screen.contains(run_together), "{run_together}:\n{screen}");
    }
    assert!(screen.contains("force sync"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn key_history_overlay() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    let events = vec![
        KeyHistoryEvent {
            key: [3; 32],
            at: fixture::ago(86_400),
            source: "radio".into(),
            event: "first-use".into(),
        },
        KeyHistoryEvent {
            key: [4; 32],
            at: fixture::ago(4),
            source: "mesh".into(),
            event: "changed".into(),
        },
    ];
    let _ = app.update(
        Input::History(HistoryView {
            num: 0x0bbd_bba9,
            title: "!0bbdbba9".into(),
            events: Ok(events),
        }),
        &snap,
        now(),
    );
    insta::assert_snapshot!(render(&app, &snap, 80, 24));
}

#[test]
fn filter_and_focus_show_in_the_screen() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    key(&mut app, &snap, KeyCode::Char('/'));
    for c in "relay".chars() {
        key(&mut app, &snap, KeyCode::Char(c));
    }
    let screen = render(&app, &snap, 80, 24);
    assert!(screen.contains("filter: relay"), "{screen}");
    assert!(
        screen.contains("Mill Relay 44") && !screen.contains("Cedar Base"),
        "{screen}"
    );
    key(&mut app, &snap, KeyCode::Enter);
    key(&mut app, &snap, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Sync);
    insta::assert_snapshot!(render(&app, &snap, 80, 24));
}

fn render_pane(
    draw: impl Fn(&mut ratatui::Frame<'_>, ratatui::layout::Rect, &ui::View<'_>),
    snap: &Snapshot,
    w: u16,
    h: u16,
) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    let app = App::default();
    let theme = Theme { no_color: true };
    let view = ui::View {
        app: &app,
        snap,
        now: now(),
        theme: &theme,
    };
    terminal.draw(|f| draw(f, f.area(), &view)).expect("draws");
    terminal.backend().to_string()
}

#[test]
fn each_pane_on_its_own() {
    let snap = fixture::snapshot();
    insta::assert_snapshot!("pane_nodes", render_pane(ui::nodes::draw, &snap, 80, 10));
    insta::assert_snapshot!("pane_sync", render_pane(ui::sync::draw, &snap, 44, 12));
    insta::assert_snapshot!("pane_link", render_pane(ui::link::draw, &snap, 60, 12));
    let mut with_broker = fixture::snapshot();
    with_broker.mqtt = Some(keysync::engine::MqttStatus {
        broker: "mqtt://gw@mqtt.example.net:1883".into(),
        state: keysync::engine::MqttState::Connected,
        since: fixture::ago(125),
        last_error: None,
        fleet: Some("north".into()),
        channels: 2,
        counts: keysync::engine::MqttCounts {
            uplink_keys: 42,
            fleet_in: 7,
            fleet_out: 12,
            ignored: 3,
            ..keysync::engine::MqttCounts::default()
        },
    });
    insta::assert_snapshot!(
        "pane_link_with_broker",
        render_pane(ui::link::draw, &with_broker, 100, 12)
    );
    let mut empty = fixture::snapshot();
    empty.nodes = std::sync::Arc::new(Vec::new());
    empty.sync.last = None;
    empty.sync.history.clear();
    empty.sync.cache = None;
    empty.link.timeline.clear();
    insta::assert_snapshot!(
        "pane_nodes_empty",
        render_pane(ui::nodes::draw, &empty, 80, 6)
    );
    insta::assert_snapshot!(
        "pane_sync_first_run_pending",
        render_pane(ui::sync::draw, &empty, 44, 8)
    );
}

#[test]
fn link_pane_lists_proxy_clients() {
    let mut snap = fixture::snapshot();
    snap.proxy_addr = Some("127.0.0.1:4404".parse().expect("addr"));
    snap.clients = vec![keysync::engine::ClientView {
        addr: "127.0.0.1:51234".parse().expect("addr"),
        since: fixture::ago(300),
        frames_in: 12,
        frames_out: 340,
        dropped: 3,
        last_activity: fixture::ago(2),
    }];
    let screen = render(&App::default(), &snap, 120, 40);
    assert!(
        screen.contains("proxy 127.0.0.1:4404 · 1 client"),
        "{screen}"
    );
    assert!(
        screen.contains("127.0.0.1:51234 5m00s in 12 out 340 drop 3"),
        "{screen}"
    );
}

#[test]
fn the_log_pane_title_carries_no_unreadable_rate() {
    let state = tui_logger::TuiWidgetState::new();
    for show_targets in [false, true] {
        let mut terminal = Terminal::new(TestBackend::new(80, 6)).expect("test backend");
        terminal
            .draw(|f| {
                let area = f.area();
                ui::log::draw(
                    f,
                    area,
                    true,
                    show_targets,
                    &state,
                    &Theme { no_color: true },
                );
            })
            .expect("draws");
        let screen = terminal.backend().to_string();
        let title = screen.lines().next().unwrap_or_default();
        assert!(title.contains(" Log "), "{screen}");
        assert!(!title.contains("/s]"), "{screen}");
        assert_eq!(title.contains("targets"), show_targets, "{screen}");
    }
}

#[test]
fn a_run_that_restarted_the_lora_chip_shows_on_the_timeline_before_anything_else() {
    // Below 2.8 a slot given back restarts the radio's LoRa chip: the operator sees each one.
    let mut snap = fixture::snapshot();
    let mut r = fixture::report(
        Outcome::Synced,
        Trigger::Check,
        10,
        2,
        4,
        "last full sync 30m00s ago ≥ TTL 30m00s",
    );
    r.released = 1;
    r.lora_restarts = 1;
    assert_eq!(ui::sync::outcome_glyph(&r), '↻');
    snap.sync.history.push_back(r.clone());
    snap.sync.last = Some(r);
    let screen = render(&App::default(), &snap, 80, 24);
    assert!(screen.contains('↻'), "{screen}");
}

#[test]
fn a_store_fault_is_worded_in_the_header_and_the_screen_goes_on() {
    use keysync::engine::StoreCallError;
    use keysync::engine::StoreError;
    let mut snap = fixture::snapshot();
    snap.store_error = Some(StoreCallError::Store(StoreError::Locked {
        path: "/var/lib/keysync/keysync.db".into(),
        holders: " (pid 4242)".into(),
    }));
    let screen = render(&App::default(), &snap, 120, 40);
    assert!(
        screen.contains("store: locked by another process"),
        "{screen}"
    );
    assert!(
        screen.contains("Nodes"),
        "the panes are still drawn:\n{screen}"
    );
}

/// The first node of the table with its contact overlay open (`Q` on the Nodes pane).
fn contact_screen(snap: &Snapshot, w: u16, h: u16) -> (App, String) {
    let mut app = App::default();
    key(&mut app, snap, KeyCode::Char('Q'));
    let screen = render(&app, snap, w, h);
    (app, screen)
}

#[test]
fn contact_qr_overlay_at_80x24() {
    let snap = fixture::snapshot();
    let (app, screen) = contact_screen(&snap, 80, 24);
    let Some(keysync::app::Overlay::Contact(contact)) = &app.overlay else {
        panic!("Q opens the contact: {:?}", app.overlay);
    };
    let seen = keysync::engine::parse_contact_url(&contact.url).expect("a contact");
    let node = app.selected(&snap).expect("a selected node");
    assert_eq!(seen.num, node.record.num);
    assert_eq!(
        Some(seen.public_key.as_slice()),
        node.record.trusted.as_ref().map(|k| &k[..])
    );
    // Every line of the code is on the screen whole, in order.
    let code = keysync::qr::qr_text(&contact.url, 1).expect("encodes");
    let rows: Vec<&str> = screen.lines().collect();
    let first = rows
        .iter()
        .position(|r| r.contains(code.lines[0].as_str()))
        .unwrap_or_else(|| panic!("the code's first line is drawn:\n{screen}"));
    for (i, line) in code.lines.iter().enumerate() {
        assert!(
            rows[first + i].contains(line.as_str()),
            "line {i}:\n{screen}"
        );
    }
    insta::assert_snapshot!(screen);
}

#[test]
fn a_contact_whose_code_does_not_fit_says_so_instead_of_drawing_it_cut() {
    let mut snap = fixture::snapshot();
    for n in std::sync::Arc::make_mut(&mut snap.nodes) {
        n.record.long_name = "A name as long as the firmware allows..".into();
    }
    let (_, screen) = contact_screen(&snap, 80, 24);
    assert!(screen.contains("this terminal gives 80×24"), "{screen}");
    assert!(!screen.contains("▀▀▀▀▀▀▀"), "no code drawn:\n{screen}");
    // A larger terminal draws it.
    let (_, screen) = contact_screen(&snap, 120, 40);
    assert!(screen.contains("█▀▀▀▀▀▀▀█"), "{screen}");
}

/// The modules drawn at `(x0, y0)`, `width` cells across and `rows` down: `true` for light,
/// two a cell (upper and lower half).
fn modules_on_screen(
    buffer: &ratatui::buffer::Buffer,
    (x0, y0): (u16, u16),
    width: u16,
    rows: u16,
) -> Vec<Vec<bool>> {
    let mut grid = Vec::new();
    for y in y0..y0 + rows {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for x in x0..x0 + width {
            let (t, b) = match buffer[(x, y)].symbol() {
                "█" => (true, true),
                "▀" => (true, false),
                "▄" => (false, true),
                " " => (false, false),
                other => panic!("{other:?} at {x},{y} is not a half block"),
            };
            top.push(t);
            bottom.push(b);
        }
        grid.push(top);
        grid.push(bottom);
    }
    grid
}

#[test]
fn the_code_drawn_at_80x24_scans_back_to_the_contact_url() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    key(&mut app, &snap, KeyCode::Char('Q'));
    let Some(keysync::app::Overlay::Contact(contact)) = &app.overlay else {
        panic!("Q opens the contact");
    };
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("test backend");
    terminal
        .draw(|f| ui::draw(f, &app, &snap, now(), &Theme { no_color: true }, None))
        .expect("draws");
    let code = keysync::qr::qr_text(&contact.url, 1).expect("encodes");
    let (width, rows) = (
        u16::try_from(code.width).expect("narrow"),
        u16::try_from(code.lines.len()).expect("short"),
    );
    // Inside the overlay's border, at the top left.
    let grid = modules_on_screen(terminal.backend().buffer(), (1, 1), width, rows);
    // As a camera sees it: 4 pixels a module, light around it, dark modules black.
    let (scale, margin) = (4, 4);
    let side = (grid[0].len() + 2 * margin) * scale;
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| {
        let (mx, my) = (
            (x / scale).checked_sub(margin),
            (y / scale).checked_sub(margin),
        );
        match (mx, my) {
            (Some(mx), Some(my)) if my < grid.len() && mx < grid[my].len() && !grid[my][mx] => 0,
            _ => 255,
        }
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one code found on the screen");
    let (_, decoded) = grids[0].decode().expect("the drawn code decodes");
    assert_eq!(decoded, contact.url);
}

#[test]
fn bidi_and_zero_width_characters_in_a_name_are_dropped_and_the_key_column_stays_put() {
    let mut snap = fixture::snapshot();
    let mut nodes = (*snap.nodes).clone();
    nodes[1].record.long_name = "ab\u{202e}gnp.exe".into();
    nodes[2].record.long_name = "Ce\u{200b}dar\u{2066}\u{200f}\u{feff} Base".into();
    snap.nodes = std::sync::Arc::new(nodes);
    let screen = render_pane(ui::nodes::draw, &snap, 80, 10);
    let lines: Vec<&str> = screen.lines().collect();
    let column = |line: &str, text: &str| {
        let at = line.find(text).expect("text in the line");
        line[..at].chars().count()
    };
    let header = lines.iter().find(|l| l.contains("NAME")).expect("header");
    let key_column = column(header, "KEY");
    for (id, name, key) in [
        ("!6b30d848", "abgnp.exe", "BQUFBQUF"),
        ("!7e3bf686", "Cedar Base", "BgYGBgYG"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(id))
            .expect("the node's row");
        assert!(line.contains(&format!("{name} ")), "{line}");
        assert_eq!(column(line, key), key_column, "{screen}");
    }
    assert!(!screen.contains(['\u{202e}', '\u{200b}', '\u{2066}', '\u{feff}']));
}
