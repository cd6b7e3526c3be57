use std::time::Duration;

use super::Backoff;

#[test]
fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
    let max = Duration::from_secs(2);
    let mut backoff = Backoff::new(max);
    let mut step = Duration::from_millis(100);
    for _ in 0..10 {
        let delay = backoff.next_delay();
        assert!(
            delay >= step / 2 && delay <= step,
            "{delay:?} outside the step {step:?}"
        );
        step = (step * 2).min(max);
    }
    backoff.reset();
    assert!(backoff.next_delay() <= Duration::from_millis(100));
}

#[test]
fn a_cap_below_the_first_step_is_respected() {
    let mut backoff = Backoff::new(Duration::from_millis(10));
    for _ in 0..5 {
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}
