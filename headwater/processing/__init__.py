"""Processing that follows the event log: triggers, actions, webhooks, facts."""
