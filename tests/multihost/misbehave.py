"""For the harness's own test: process 1 fails at once, every other process hangs."""

import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--coordinator")
parser.add_argument("--num-processes", type=int)
parser.add_argument("--process-id", type=int)
args = parser.parse_args()
if args.process_id == 1:
    print("process 1 fails now", flush=True)
    sys.exit(3)
print(f"process {args.process_id} waits forever", flush=True)
while True:
    time.sleep(1)
