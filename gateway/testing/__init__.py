"""PUBLIC: test helpers for the gateway and its plugins. Fakes, not mocks: each behaves like the
real thing on 127.0.0.1 or in-process.

- :mod:`gateway.testing.fake_telegram`: ``FakeTelegramServer`` / ``open_fake_telegram``, the Bot
  API subset the Telegram plugin uses (getUpdates offsets, webhooks, flood control, faults).
- :mod:`gateway.testing.fake_anthropic`: ``FakeAnthropicServer`` / ``open_fake_anthropic``, the
  Messages API, with the same scripting as the fake OpenAI server.
- :mod:`gateway.testing.fake_openai`: ``FakeOpenAIServer`` / ``open_fake_openai``, the chat
  completions API (latency, failures, hangs, hooks).
- :mod:`gateway.testing.fake_whatsapp`: ``FakeWhatsAppServer`` / ``open_fake_whatsapp``, the
  WhatsApp Cloud API (sends, templates, media) and Meta's signed webhooks with retries.
- :mod:`gateway.testing.fake_graph`: the Graph Send API of Messenger and Instagram, attachment
  hosting, and their signed webhooks.
- :mod:`gateway.testing.fake_twilio`: the Twilio REST API (Messages, media, recordings) and its
  signed form webhooks for SMS/MMS, statuses and voice calls.
- :mod:`gateway.testing.fake_channel`: ``FakeChannel``, an in-process channel plugin.
- :mod:`gateway.testing.fake_llm`: ``FakeProvider`` / ``FakeModel``, an in-process LLM provider.
- :mod:`gateway.testing.context`: ``MemoryChannelContext`` / ``MemoryProviderContext``, to test
  one plugin without the daemon.
- :mod:`gateway.testing.conformance`: ``check_channel(harness)``, the suite every channel plugin
  must pass; :mod:`gateway.testing.conformance_llm`: ``check_provider(harness)`` for providers.
- :mod:`gateway.testing.daemon`: ``open_gateway(config_text, registry, directory)``, the whole
  daemon in-process; :mod:`gateway.testing.process`: ``open_daemon_process``, as a real process.
- :mod:`gateway.testing.chaos`: ``run_kill_trials``, kill -9 at random moments under load, restart,
  and check that nothing acknowledged was lost and no reply was sent twice.

Each fake server also runs standalone: ``python -m gateway.testing.fake_telegram --port 0``.
"""
