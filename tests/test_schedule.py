import pytest

from trainmap.ensemble import checkpoint_schedule, parse_schedule


def test_schedule_is_pythia_like():
    assert checkpoint_schedule(300, 10) == [0, 1, 2, 4, 8, 16, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300]


def test_schedule_always_ends_at_total():
    assert checkpoint_schedule(25, 4)[-1] == 25


def test_schedule_rejects_zero_steps():
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        checkpoint_schedule(0)


def test_parse_schedule_ranges_and_final_step():
    assert parse_schedule("0,1,2, 10:30:10", 40) == [0, 1, 2, 10, 20, 30, 40]


def test_parse_schedule_rejects_garbage():
    with pytest.raises(ValueError, match="invalid checkpoint schedule item 'x'"):
        parse_schedule("0,x", 10)


def test_parse_schedule_rejects_steps_past_end():
    with pytest.raises(ValueError, match=r"\[50\] are outside 0..40"):
        parse_schedule("0,50", 40)
