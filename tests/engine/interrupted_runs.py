"""What the tests of stopped training runs share: the toy run they stop and the line a stop prints."""
import re

STOP_LINE = re.compile(
    r"^training stopped by (SIG\w+) after iteration (\d+) \(train\.max_iter (\d+)\); checkpoint (\S+) \(saved now; "
    r"a resume continues at iteration (\d+)\); resume with: (.+)$"
)
# 10 iterations of the toy detector, a checkpoint every 5, the log line of every iteration
RUN = ["train.max_iter=10", "train.checkpointer.period=5", "train.log_period=1", "dataloader.evaluator=null"]


def stop_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("training stopped")]
