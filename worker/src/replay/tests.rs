use super::ReplayWindow;

#[test]
fn repeats_are_refused() {
    let mut window = ReplayWindow::new(8);
    assert!(window.admit(1));
    assert!(window.admit(3));
    assert!(!window.admit(1));
    assert!(!window.admit(3));
    // Out of order but never seen, while nothing was forgotten: fresh.
    assert!(window.admit(2));
}

#[test]
fn ids_below_a_full_window_are_refused() {
    let mut window = ReplayWindow::new(4);
    for id in 10..20 {
        assert!(window.admit(id), "fresh id {id}");
    }
    // 16..=19 are remembered; anything below 16 may have been seen and forgotten.
    assert!(!window.admit(15));
    assert!(!window.admit(1));
    assert!(!window.admit(19));
    assert!(window.admit(25));
    assert!(
        window.admit(21),
        "above the lowest remembered id and never seen"
    );
}

#[test]
fn the_default_window_holds_4096_ids() {
    let mut window = ReplayWindow::new(super::REPLAY_WINDOW);
    for id in 1..=5000u64 {
        assert!(window.admit(id));
    }
    assert!(!window.admit(5000 - 4096));
    assert!(!window.admit(4000));
}
