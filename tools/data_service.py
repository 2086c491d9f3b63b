"""A tf.data service dispatcher or worker, for training with --data_service.

  # the dispatcher, once (fault tolerant: its journal lives in --work_dir)
  python tools/data_service.py --role=dispatcher --port=5050 --work_dir=/shared/ds \
      --host=THIS_HOST
  # a worker, on each machine that lends its CPUs to the input pipeline
  python tools/data_service.py --role=worker --dispatcher_address=HOST:5050 \
      --host=THIS_HOST
  # then train with --data_service=grpc://HOST:5050

Prints one line saying where it listens ("dispatcher listening on grpc://..." /
"worker listening on HOST:PORT for dispatcher ..."), and runs until SIGTERM or
SIGINT, then stops its server and exits with status 0. The dispatcher's log
(TensorFlow's INFO lines, which it turns on) says when a worker registers and,
once a worker has not heartbeated for --worker_timeout_ms, "Lost worker ...".
See docs/scale.md.
"""

import os
import signal
import sys
import threading

from absl import app, flags, logging

flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "What to start.")
flags.DEFINE_integer("port", 0, "Port to listen on; 0: a free one (printed).")
flags.DEFINE_string("dispatcher_address", "",
                    "worker: HOST:PORT of the dispatcher (no grpc:// prefix needed).")
flags.DEFINE_string("host", "localhost",
                    "The name or address others reach this machine by: a worker "
                    "registers it with the dispatcher, which hands it to trainers; "
                    "the dispatcher prints it in its address. On several machines, "
                    "this machine's name or address.")
flags.DEFINE_string("work_dir", "",
                    "dispatcher: folder for its journal; with one the dispatcher is "
                    "fault tolerant (a restarted dispatcher recovers its jobs). "
                    "Empty: no journal.")
flags.DEFINE_integer("worker_timeout_ms", 5000,
                     "dispatcher: a worker silent this long is dropped.")
flags.DEFINE_integer("heartbeat_interval_ms", 1000,
                     "worker: how often it tells the dispatcher it is alive.")

_WATCH_S = 1.0


def start_dispatcher(port: int, work_dir: str, worker_timeout_ms: int):
  service = _service()
  config = service.DispatcherConfig(
      port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir),
      worker_timeout_ms=worker_timeout_ms,
      # The maintenance pass that also finds lost workers: every second, not the
      # default 10 minutes, so a lost worker is logged soon after its timeout.
      job_gc_check_interval_ms=1000)
  return service.DispatchServer(config)


def start_worker(port: int, dispatcher_address: str, worker_host: str,
                 heartbeat_interval_ms: int):
  service = _service()
  address = dispatcher_address.removeprefix("grpc://")
  config = service.WorkerConfig(
      dispatcher_address=address, port=port,
      worker_address=f"{worker_host}:%port%",
      heartbeat_interval_ms=heartbeat_interval_ms)
  return service.WorkerServer(config)


def _service():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.data.experimental.service


def _watch_workers(server, stop: threading.Event) -> None:
  """Logs each new worker. (The count never drops: the dispatcher keeps a lost
  worker in its state; TensorFlow's own log line "Lost worker ... due to timeout"
  says when one is lost.)"""
  known = None
  while not stop.wait(_WATCH_S):
    count = server._num_workers()  # pylint: disable=protected-access
    if count != known:
      logging.info("data service: %d worker(s) registered", count)
    known = count


def main(argv):
  del argv
  if FLAGS.role is None:
    sys.exit("error: --role=dispatcher or --role=worker is required")
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, _: stop.set())
  if FLAGS.role == "dispatcher":
    # TensorFlow's INFO log on, before TensorFlow loads: it is where the dispatcher
    # says which workers it registers and which it loses ("Lost worker ...").
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if FLAGS.work_dir:
      os.makedirs(FLAGS.work_dir, exist_ok=True)
    server = start_dispatcher(FLAGS.port, FLAGS.work_dir, FLAGS.worker_timeout_ms)
    port = server.target.rsplit(":", 1)[1]
    print(f"dispatcher listening on grpc://{FLAGS.host}:{port} (journal: "
          f"{FLAGS.work_dir or 'none, not fault tolerant'})", flush=True)
    watcher = threading.Thread(target=_watch_workers, args=(server, stop), daemon=True)
    watcher.start()
  else:
    if not FLAGS.dispatcher_address:
      sys.exit("error: --role=worker needs --dispatcher_address=HOST:PORT")
    server = start_worker(FLAGS.port, FLAGS.dispatcher_address, FLAGS.host,
                          FLAGS.heartbeat_interval_ms)
    port = server._address.rsplit(":", 1)[1]  # pylint: disable=protected-access
    print(f"worker listening on {FLAGS.host}:{port} for dispatcher "
          f"{FLAGS.dispatcher_address}", flush=True)
  stop.wait()
  server._stop()  # pylint: disable=protected-access
  print(f"{FLAGS.role} stopped", flush=True)


FLAGS = flags.FLAGS

if __name__ == "__main__":
  app.run(main)
