"""Referral rewards: a referred contact's purchase, and the timer that releases the reward."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from stagecoach.engine.domain.conditions import EventRecord
    from stagecoach.engine.protocol import (
        CANCEL_REWARD_ACTIVITY,
        RECORD_CONVERSION_ACTIVITY,
        REFERRAL_TIMERS,
        RELEASE_REWARDS_ACTIVITY,
        REWARD_RELEASE_TIMER,
    )
    from stagecoach.engine.protocol.messages import (
        ConversionRequest,
        RefundRequest,
        RewardDecision,
    )

from stagecoach.workflows.contact.core import ContactCore

REFUND_CANCELS_REWARD = "refund-cancels-reward"
"""Patch id: an ``order.refunded`` of a referred contact cancels the referrer's held
reward (workflows that saw a refund before it did nothing)."""


class ReferralRewards(ContactCore):
    """The referrer's reward, held for the return window, released by a durable timer."""

    async def _referral_converted(self) -> None:
        """A referred contact's first purchase: the referrer may earn a reward, held for
        the return window; a timer releases it."""
        decision: RewardDecision = await workflow.execute_activity(
            RECORD_CONVERSION_ACTIVITY,
            ConversionRequest(contact_id=self._contact_id, at=workflow.now()),
            result_type=RewardDecision,
            start_to_close_timeout=timedelta(seconds=60),
            summary="referral conversion",
        )
        if decision.rewarded and decision.hold_until is not None:
            self._arm(
                REFERRAL_TIMERS,
                REWARD_RELEASE_TIMER,
                max(decision.hold_until - workflow.now(), timedelta(0)),
            )

    async def _release_rewards(self) -> None:
        # The return window is over: release what is due (this reward among them).
        await workflow.execute_activity(
            RELEASE_REWARDS_ACTIVITY,
            workflow.now(),
            start_to_close_timeout=timedelta(seconds=60),
            summary="release referral reward",
        )

    async def _refunded(self, record: EventRecord) -> None:
        """A referred contact's order was refunded: the referrer's reward for it is
        cancelled if still held within the return window (the activity decides)."""
        await workflow.execute_activity(
            CANCEL_REWARD_ACTIVITY,
            RefundRequest(
                contact_id=self._contact_id,
                at=record.at,
                order_id=str(record.properties.get("order_id") or ""),
            ),
            start_to_close_timeout=timedelta(seconds=60),
            summary="referral reward: refund",
        )
