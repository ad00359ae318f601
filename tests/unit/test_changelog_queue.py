"""The changelog queue keeps standby records when the flow resumes, and is emptied when a rebalance starts.

Faust's own queue (``clear_on_resume``) was emptied by every flow resume of a recovery, dropping
standby changelog records already fetched — the consumer stayed past them, so a standby (and the
active partition it later became) lost them for good.
"""

import asyncio

from mode.utils.queues import FlowControlEvent

from vsync_stream.tables.restore import ChangelogQueue


def test_a_resume_keeps_the_queued_records_and_a_rebalance_drops_them() -> None:
    async def scenario() -> None:
        flow = FlowControlEvent()
        queue: ChangelogQueue = ChangelogQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        flow.suspend()  # a rebalance starts; recovery reads the changelogs
        flow.resume()  # Faust resumes the flow to read the active changelogs
        queue.put_nowait("standby record 4785")
        queue.put_nowait("standby record 4786")
        flow.resume()  # recovery done: Faust resumes the flow again
        assert queue.qsize() == 2
        assert await queue.get() == "standby record 4785"
        flow.suspend()  # the next rebalance: the app suspends the flow, then clears its queues
        flow.clear()
        assert queue.qsize() == 0

    asyncio.run(scenario())
