"""The embedded PostgreSQL's start and stop decisions (``sansio.embedded_lifecycle``), without a server."""

from sansio.embedded_lifecycle import StartAction, StopAction, on_start, on_stop


def test_a_process_that_finds_no_server_running_starts_it():
    assert on_start(server_running=False, live_leases=0) is StartAction.START


def test_a_process_that_finds_no_server_running_starts_it_even_while_others_hold_leases():
    assert on_start(server_running=False, live_leases=2) is StartAction.START


def test_a_process_that_finds_the_server_used_by_a_live_process_joins_it():
    assert on_start(server_running=True, live_leases=1) is StartAction.JOIN


def test_a_process_that_finds_the_server_running_with_no_live_user_adopts_it():
    assert on_start(server_running=True, live_leases=0) is StartAction.ADOPT


def test_the_last_process_to_stop_stops_the_server():
    assert on_stop(server_running=True, live_leases=0) is StopAction.STOP


def test_a_process_that_stops_while_another_uses_the_server_leaves_it_running():
    assert on_stop(server_running=True, live_leases=1) is StopAction.LEAVE


def test_a_process_that_stops_after_the_server_went_away_has_nothing_to_stop():
    assert on_stop(server_running=False, live_leases=0) is StopAction.NOTHING
