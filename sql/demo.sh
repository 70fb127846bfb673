#!/usr/bin/env bash
# The main job: arrives with the coordinator (see README).
echo "make demo: coming with the coordinator (issue 3). 'make test' passes today."
