"""The bus's core delivery promises, on one server and on a cluster: the tests of
tests/bus and tests/reliability, collected here again under this package's settings
(parametrised over both)."""

from __future__ import annotations

from tests.bus.test_delivery import (
    test_duplicate_envelope_is_applied_once_and_the_copy_dead_lettered,
    test_emergency_entries_are_handled_before_normal_ones,
    test_single_and_batch_signed_messages_are_all_delivered_and_acked,
    test_starvation_guard_lets_normal_entries_through_a_long_emergency_burst,
)
from tests.bus.test_exporter import (
    test_exporter_counts_the_lag_the_server_cannot_tell_after_deletions,
    test_exporter_reports_lengths_lag_and_dead_letters,
)
from tests.bus.test_failures import (
    test_batch_entry_resumes_after_the_envelopes_already_applied,
    test_consumer_restarted_under_the_same_name_drains_its_own_pending_first,
    test_deleted_group_is_recreated_and_applied_entries_are_not_reapplied,
    test_killed_consumers_entries_are_claimed_and_processed_exactly_once,
    test_poison_message_reaches_dead_letter_with_provenance,
    test_rejected_entries_go_to_dead_letter_with_reason_and_are_not_retried,
    test_transient_failure_is_retried_with_backoff_then_acked,
)
from tests.bus.test_retention import (
    test_full_stream_pushes_back_with_a_clear_error_and_writes_nothing_silently,
    test_sheddable_stream_sheds_and_counts_each_shed_message,
    test_trim_removes_only_entries_every_group_has_acked,
)
from tests.reliability.test_zombie import test_a_unit_leased_to_a_live_consumer_is_left_to_it

__all__ = [
    "test_a_unit_leased_to_a_live_consumer_is_left_to_it",
    "test_batch_entry_resumes_after_the_envelopes_already_applied",
    "test_consumer_restarted_under_the_same_name_drains_its_own_pending_first",
    "test_deleted_group_is_recreated_and_applied_entries_are_not_reapplied",
    "test_duplicate_envelope_is_applied_once_and_the_copy_dead_lettered",
    "test_emergency_entries_are_handled_before_normal_ones",
    "test_exporter_counts_the_lag_the_server_cannot_tell_after_deletions",
    "test_exporter_reports_lengths_lag_and_dead_letters",
    "test_full_stream_pushes_back_with_a_clear_error_and_writes_nothing_silently",
    "test_killed_consumers_entries_are_claimed_and_processed_exactly_once",
    "test_poison_message_reaches_dead_letter_with_provenance",
    "test_rejected_entries_go_to_dead_letter_with_reason_and_are_not_retried",
    "test_sheddable_stream_sheds_and_counts_each_shed_message",
    "test_single_and_batch_signed_messages_are_all_delivered_and_acked",
    "test_starvation_guard_lets_normal_entries_through_a_long_emergency_burst",
    "test_transient_failure_is_retried_with_backoff_then_acked",
    "test_trim_removes_only_entries_every_group_has_acked",
]
