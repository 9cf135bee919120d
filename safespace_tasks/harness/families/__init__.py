"""The task families, one module each (the family name is the module's and its ``task_configs/`` folder's).

toxicity (:class:`~.toxicity.ToxicityTask`), paradetox, detoxpref, behaviour (continuation, detox,
recognition), units, transfer, refusal, direction. Each subclasses
:class:`safespace_tasks.harness.core.CorpusTask`; importing a module registers its families and
nothing else.
"""
