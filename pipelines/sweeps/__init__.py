"""``sslpipe sweep``: Ray Tune over any config key, ranked by the online monitor, resumable.

One module per job: ``space`` (the sweep file: parse and validate at load), ``locations`` (where trials and
Tune's experiment live), ``trial`` (one Tune trial = one pretraining run), ``driver`` (pool and curation once,
then the Tuner), ``results`` (the table, best config and summary) and ``report`` (the HTML page and the text
table). ``pipelines/sweep.py`` is the command line and re-exports the public names.

Why it is built this way (Ray 2.60, Train V2):

* ``Tuner(TorchTrainer(...))`` no longer works; each Tune trial is a *function*
  that builds and fits its own TorchTrainer (``pipelines.pretrain.pretrain``)
  with ``TuneReportCallback`` in the Train RunConfig and the Tune trial id as
  the Train run name, so a restarted trial resumes from its own checkpoint.
* In-process Train (``train.num_workers=0``) cannot run inside a Tune trial:
  Train V2's local mode refuses ``ray.train.*`` calls in a Tune session, and it
  never calls Train callbacks, so ``TuneReportCallback`` would see nothing. Such
  trials therefore run ``pretrain`` in a helper Ray task (a process without a
  Tune session, pinned to the trial's node, holding no CPU of its own: the trial
  reserved it; a task, not an actor, so later trials reuse a worker that has
  torch imported), and the trial forwards each epoch to Tune from the checkpoints
  the loop writes. Checkpoints carry the whole metric history, so no epoch is
  missed however slowly we poll.
* Trials are ranked by the online monitor (pipelines/monitor.py), never by the SSL
  loss: losses are not comparable across temperatures. ``metric:`` is knn_top1 on
  the labelled evaluation set where there is one, else rankme (label-free). ASHA and PBT use ``epoch`` as their clock,
  so a trial restarted after an interrupted sweep stays on the same clock.
* PBT needs Tune-level checkpoints (it copies a good trial's weights into a weak
  one and perturbs its temperature, giving a temperature schedule); only the
  in-process path reports them, so PBT requires ``train.num_workers=0``.
* Pool and curation run once (``run_pipeline(until="curate", resume=True)``);
  every trial trains on the same curated shards, materialised once in the
  object store.
"""
