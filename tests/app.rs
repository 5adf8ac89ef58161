//! `App::update`: every key action, against the fixed snapshot.

mod common;

use common::fixture::{self, now};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use keysync::app::{App, Effect, HistoryView, Input, KEYMAP, Overlay, Pane, SortKey, ZOOMS};
use keysync::engine::{Command, Snapshot};
use tui_logger::TuiWidgetEvent;

fn press(app: &mut App, snap: &Snapshot, code: KeyCode) -> Option<Effect> {
    app.update(
        Input::Key(KeyEvent::new(code, KeyModifiers::NONE)),
        snap,
        now(),
    )
}

fn selected_num(app: &App, snap: &Snapshot) -> u32 {
    app.selected(snap).expect("a selection").record.num
}

#[test]
fn q_and_ctrl_c_quit() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('q')),
        Some(Effect::Quit)
    );
    assert!(app.quit);
    let mut app = App::default();
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(
        app.update(Input::Key(ctrl_c), &snap, now()),
        Some(Effect::Quit)
    );
}

#[test]
fn f_c_and_shift_r_command_the_engine_and_say_so() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('f')),
        Some(Effect::Engine(Command::ForceSync))
    );
    assert_eq!(
        app.message.as_ref().map(|m| m.1.as_str()),
        Some("force sync requested")
    );
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('c')),
        Some(Effect::Engine(Command::ResetCache))
    );
    assert_eq!(
        app.message.as_ref().map(|m| m.1.as_str()),
        Some("cache cleared: next check will sync")
    );
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('R')),
        Some(Effect::Engine(Command::Reconnect))
    );
}

#[test]
fn tab_and_shift_tab_cycle_focus_through_the_four_panes() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    let mut seen = vec![app.focus];
    for _ in 0..4 {
        press(&mut app, &snap, KeyCode::Tab);
        seen.push(app.focus);
    }
    assert_eq!(
        seen,
        [Pane::Nodes, Pane::Sync, Pane::Link, Pane::Log, Pane::Nodes]
    );
    press(&mut app, &snap, KeyCode::BackTab);
    assert_eq!(app.focus, Pane::Log);
}

#[test]
fn help_toggles_and_any_key_closes_it_without_acting() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::Char('?'));
    assert!(app.showing_help());
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('f')),
        None,
        "the key only closes the help"
    );
    assert!(!app.showing_help());
}

#[test]
fn node_selection_moves_and_stays_in_bounds() {
    let snap = fixture::snapshot();
    let rows = app_rows(&snap);
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::Up);
    assert_eq!(app.nodes.selected, 0);
    press(&mut app, &snap, KeyCode::Down);
    press(&mut app, &snap, KeyCode::Char('j'));
    assert_eq!(app.nodes.selected, 2);
    press(&mut app, &snap, KeyCode::Char('k'));
    assert_eq!(app.nodes.selected, 1);
    press(&mut app, &snap, KeyCode::End);
    assert_eq!(app.nodes.selected, rows - 1);
    press(&mut app, &snap, KeyCode::Down);
    assert_eq!(app.nodes.selected, rows - 1);
    press(&mut app, &snap, KeyCode::Home);
    assert_eq!(app.nodes.selected, 0);
    press(&mut app, &snap, KeyCode::PageDown);
    assert_eq!(app.nodes.selected, rows - 1);
    press(&mut app, &snap, KeyCode::PageUp);
    assert_eq!(app.nodes.selected, 0);
}

fn app_rows(snap: &Snapshot) -> usize {
    App::default().visible_nodes(snap).len()
}

#[test]
fn pending_keys_sort_first_and_s_cycles_the_order() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    assert!(
        app.selected(&snap).expect("row").record.pending.is_some(),
        "attention order puts pending first"
    );
    press(&mut app, &snap, KeyCode::Char('s'));
    assert_eq!(app.nodes.sort, Some(SortKey::LastSeen));
    press(&mut app, &snap, KeyCode::Char('s'));
    assert_eq!(app.nodes.sort, Some(SortKey::Name));
    assert_eq!(
        app.selected(&snap).expect("row").record.long_name,
        "Beacon Node 05"
    );
    press(&mut app, &snap, KeyCode::Char('s'));
    assert_eq!(app.nodes.sort, Some(SortKey::Id));
    assert_eq!(selected_num(&app, &snap), 0xa1);
    press(&mut app, &snap, KeyCode::Char('s'));
    assert_eq!(app.nodes.sort, Some(SortKey::Attention));
}

#[test]
fn slash_filters_by_id_or_name_and_esc_clears() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::Char('/'));
    assert!(app.editing_filter());
    for c in "reLAYx".chars() {
        press(&mut app, &snap, KeyCode::Char(c));
    }
    press(&mut app, &snap, KeyCode::Backspace);
    assert_eq!(app.nodes.filter, "reLAY");
    // While typing, command keys are text: `q` does not quit.
    assert_eq!(press(&mut app, &snap, KeyCode::Char('q')), None);
    press(&mut app, &snap, KeyCode::Backspace);
    press(&mut app, &snap, KeyCode::Enter);
    assert!(!app.editing_filter());
    let names: Vec<_> = app
        .visible_nodes(&snap)
        .iter()
        .map(|n| n.record.long_name.clone())
        .collect();
    assert_eq!(names, ["Mill Relay 44"]);
    press(&mut app, &snap, KeyCode::Char('/'));
    for c in "!1ff2".chars() {
        press(&mut app, &snap, KeyCode::Char(c));
    }
    press(&mut app, &snap, KeyCode::Esc);
    assert!(app.nodes.filter.is_empty() && !app.editing_filter());
    press(&mut app, &snap, KeyCode::Char('/'));
    press(&mut app, &snap, KeyCode::Char('c'));
    press(&mut app, &snap, KeyCode::Enter);
    press(&mut app, &snap, KeyCode::Esc);
    assert!(
        app.nodes.filter.is_empty(),
        "Esc outside editing clears the filter too"
    );
}

#[test]
fn accept_asks_first_and_y_sends_the_decision() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    let pending = selected_num(&app, &snap);
    assert_eq!(press(&mut app, &snap, KeyCode::Char('a')), None);
    let question = app.confirm().expect("a question").question.clone();
    assert!(
        question.contains("accept new key") && question.contains("!0bbdbba9"),
        "{question}"
    );
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('y')),
        Some(Effect::Engine(Command::AcceptKey(pending)))
    );
    assert!(app.confirm().is_none());
}

#[test]
fn reject_asks_first_and_anything_but_y_cancels() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::Char('r'));
    assert!(
        app.confirm()
            .expect("a question")
            .question
            .contains("reject new key")
    );
    assert_eq!(press(&mut app, &snap, KeyCode::Char('n')), None);
    assert!(app.confirm().is_none());
    assert!(app.message.as_ref().expect("said").1.contains("cancelled"));
    press(&mut app, &snap, KeyCode::Char('r'));
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('Y')),
        Some(Effect::Engine(Command::RejectKey(0x0bbd_bba9)))
    );
}

#[test]
fn accept_on_a_node_without_a_pending_key_explains() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::Down);
    assert_eq!(press(&mut app, &snap, KeyCode::Char('a')), None);
    assert!(app.confirm().is_none());
    assert!(
        app.message
            .as_ref()
            .expect("said")
            .1
            .contains("has no pending key")
    );
}

#[test]
fn enter_asks_for_the_key_history_and_esc_closes_it() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    let num = selected_num(&app, &snap);
    assert_eq!(
        press(&mut app, &snap, KeyCode::Enter),
        Some(Effect::LoadHistory(num))
    );
    let _ = app.update(
        Input::History(HistoryView {
            num,
            title: "x".into(),
            events: Ok(Vec::new()),
        }),
        &snap,
        now(),
    );
    assert!(app.history().is_some());
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('f')),
        None,
        "keys do not act under the overlay"
    );
    press(&mut app, &snap, KeyCode::Esc);
    assert!(app.history().is_none());
}

#[test]
fn plus_and_minus_zoom_the_timeline_within_bounds() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    assert_eq!(app.window().as_secs(), 30 * 60);
    for _ in 0..10 {
        press(&mut app, &snap, KeyCode::Char('+'));
    }
    assert_eq!(app.window().as_secs(), ZOOMS[0] * 60);
    for _ in 0..10 {
        press(&mut app, &snap, KeyCode::Char('-'));
    }
    assert_eq!(app.window().as_secs(), ZOOMS[ZOOMS.len() - 1] * 60);
}

#[test]
fn log_pane_keys_drive_the_log_widget() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    for _ in 0..3 {
        press(&mut app, &snap, KeyCode::Tab);
    }
    assert_eq!(app.focus, Pane::Log);
    let cases = [
        (KeyCode::Char('t'), TuiWidgetEvent::HideKey),
        (KeyCode::Up, TuiWidgetEvent::UpKey),
        (KeyCode::Down, TuiWidgetEvent::DownKey),
        (KeyCode::Right, TuiWidgetEvent::RightKey),
        (KeyCode::Left, TuiWidgetEvent::LeftKey),
        (KeyCode::PageUp, TuiWidgetEvent::PrevPageKey),
        (KeyCode::PageDown, TuiWidgetEvent::NextPageKey),
        (KeyCode::Esc, TuiWidgetEvent::EscapeKey),
    ];
    for (key, event) in cases {
        assert_eq!(
            press(&mut app, &snap, key),
            Some(Effect::Log(event)),
            "{key:?}"
        );
    }
    assert!(app.show_log_targets);
    // Node keys do nothing outside the nodes pane.
    assert_eq!(press(&mut app, &snap, KeyCode::Char('a')), None);
    assert!(app.confirm().is_none());
}

#[test]
fn selection_is_clamped_when_the_node_list_shrinks() {
    let mut snap = fixture::snapshot();
    let mut app = App::default();
    press(&mut app, &snap, KeyCode::End);
    let mut fewer = (*snap.nodes).clone();
    fewer.truncate(2);
    snap.nodes = std::sync::Arc::new(fewer);
    app.clamp(&snap);
    assert_eq!(app.nodes.selected, 1);
}

fn history_of(num: u32) -> Input {
    Input::History(HistoryView {
        num,
        title: "x".into(),
        events: Ok(Vec::new()),
    })
}

#[test]
fn one_overlay_at_a_time_and_a_question_is_never_covered() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    // A key history opened while the help is up replaces it.
    press(&mut app, &snap, KeyCode::Char('?'));
    assert_eq!(app.overlay, Some(Overlay::Help));
    let _ = app.update(history_of(1), &snap, now());
    assert!(app.history().is_some() && !app.showing_help());
    press(&mut app, &snap, KeyCode::Esc);
    assert_eq!(app.overlay, None);
    // A question waiting for y/n stays on top of a history that arrives late.
    // Attention order puts the node with a pending key first.
    let pending = selected_num(&app, &snap);
    press(&mut app, &snap, KeyCode::Char('a'));
    assert!(app.confirm().is_some());
    let _ = app.update(history_of(pending), &snap, now());
    assert!(app.confirm().is_some() && app.history().is_none());
    // While the filter is typed, `?` is a character of the filter, not the help.
    press(&mut app, &snap, KeyCode::Char('n'));
    press(&mut app, &snap, KeyCode::Char('/'));
    press(&mut app, &snap, KeyCode::Char('?'));
    assert!(app.editing_filter());
    assert_eq!(app.nodes.filter, "?");
}

#[test]
fn every_binding_is_in_the_help_unless_marked_hidden() {
    for b in KEYMAP {
        assert_eq!(
            b.help.is_empty(),
            b.hidden,
            "{}: a binding is either explained in the help or marked hidden",
            b.label
        );
        if b.hidden {
            assert!(
                KEYMAP
                    .iter()
                    .any(|o| !o.hidden && o.scope == b.scope && o.label.contains(b.label)),
                "{}: a hidden key is documented by its pair",
                b.label
            );
        }
    }
}

#[test]
fn shift_q_shows_the_selected_nodes_contact_and_q_closes_it_without_quitting() {
    let snap = fixture::snapshot();
    let mut app = App::default();
    let num = selected_num(&app, &snap);
    assert_eq!(press(&mut app, &snap, KeyCode::Char('Q')), None);
    let Some(Overlay::Contact(contact)) = &app.overlay else {
        panic!("the contact overlay: {:?}", app.overlay);
    };
    assert_eq!(contact.num, num);
    assert!(contact.code.is_ok());
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('f')),
        None,
        "keys do not act under it"
    );
    assert!(app.overlay.is_some());
    assert_eq!(
        press(&mut app, &snap, KeyCode::Char('q')),
        None,
        "q closes, not quits"
    );
    assert_eq!((app.overlay.clone(), app.quit), (None, false));

    // A node without a trusted key has no contact to give.
    let mut keyless = fixture::snapshot();
    for n in std::sync::Arc::make_mut(&mut keyless.nodes) {
        n.record.trusted = None;
    }
    let mut app = App::default();
    press(&mut app, &keyless, KeyCode::Char('Q'));
    assert_eq!(app.overlay, None);
    let said = app.message.as_ref().map_or("", |(_, m)| m.as_str());
    assert!(said.ends_with("has no trusted key to share"), "{said}");
}
