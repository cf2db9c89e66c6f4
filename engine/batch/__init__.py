"""The batch engine: every case of a folder through one loaded model, pipelined, resumable, shared between
processes, with records and a summary. :func:`.run.run_batch` runs a batch from :class:`.settings.BatchSettings`;
``tilewise batch`` (:mod:`..commands.batch`) parses its flags into them, and Ray actors (:mod:`..distributed`) run
its cases elsewhere.

- :mod:`.cases`: the cases of a folder, nnU-Net's sharding; :mod:`.stages`: one case as stages (read, preprocess,
  sliding window, export, write), which ``tilewise predict`` also runs; :mod:`.records`: what is kept of each case;
- :mod:`.pipeline`: the stages of several cases on reader, device and writer threads;
- :mod:`.integrity`: each output's size and SHA-256; :mod:`.resume`: which cases are finished (outputs re-checked);
- :mod:`.claims` and :mod:`.sharing`: one O_EXCL lock file per case, so several processes share a folder;
- :mod:`.collect`, :mod:`.summary`: records into ``batch_summary.json`` with a progress bar; Ctrl-C and SIGTERM.
"""
