from fedsqueeze.wire.ledger import Ledger


def test_ledger_counts_real_lengths_and_filters():
    led = Ledger()
    assert led.record(1, 0, "down", "model", b"abcd") == b"abcd"
    led.record(1, 0, "up", "update", b"xyz")
    led.record(1, 1, "up", "update", b"12345")
    led.record(2, 1, "up", "control", b"1")
    assert led.total() == 13
    assert led.total("up") == 9 and led.total("down") == 4
    assert led.total("up", round=1) == 8 and led.total(kind="control") == 1 and led.total(client=1) == 6
    assert led.per_round() == {1: {"up": 8, "down": 4}, 2: {"up": 1, "down": 0}}
    again = Ledger.from_state(led.to_state())
    assert again.to_state() == led.to_state()
    again.truncate_after(1)
    assert again.total() == 12


def test_ledger_rejects_bad_direction():
    import pytest
    with pytest.raises(ValueError):
        Ledger().record(1, 0, "sideways", "x", b"")  # type: ignore[arg-type]
