"""The Python client: `Client` (a background thread) and `AsyncClient` (an asyncio task).

    client = headwater.Client("http://127.0.0.1:8000", api_key="hw_live_...")
    client.track("purchase", subject="cust_123", data={"amount": 49.99})
    client.flush()

`events.py` checks and encodes an event, `outbox.py` is the bounded queue and the count of what
became of every event, `delivery.py` the retry rules (no I/O), and the two clients drive them.
"""

from headwater.client.async_client import AsyncClient
from headwater.client.delivery import Backoff, DeliveryError
from headwater.client.options import QueueFullError
from headwater.client.outbox import Stats
from headwater.client.sync_client import Client

__all__ = ["AsyncClient", "Backoff", "Client", "DeliveryError", "QueueFullError", "Stats"]
