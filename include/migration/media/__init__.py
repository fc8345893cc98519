"""The media entity: its files read from the legacy media root, uploaded to Supabase Storage, verified.

``hooks`` is what the shared pipeline calls (the entity's settings, DAG params and
steps); ``source`` reads and checks the legacy files; ``uploads`` is the load's upload
pass; ``reconcile`` and ``catalog`` compare Storage with ``public.media`` (through
``storage.objects`` where readable); ``cutover`` is the Storage criterion of the
verdict; ``restore`` puts back objects a rolled-back cleanup removed.
"""
