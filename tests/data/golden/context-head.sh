# context.sh of head.sge, written by elastic; the format is contextualization/README.md section 3.
# It holds password hashes and keys: do not log it.
HOSTNAME='head'
PROJECT='sge'
NODE_NAME='head'
NODE_GROUP='head'
ETH0_MAC='02:00:0a:14:00:02'
ETH0_IP='10.20.0.2'
ETH0_MASK='24'
ETH0_GATEWAY='10.20.0.1'
DNS='10.20.0.1'
SEARCH_DOMAIN='sge.cluster'
HOSTS='10.20.0.2 head
10.20.0.10 worker1
10.20.0.11 worker2
10.20.0.12 worker3
10.20.0.13 worker4'
USER0_NAME='sgeuser'
USER0_UID='1000'
USER0_SHELL='/bin/sh'
START_SCRIPT_BASE64='ZWxhc3RpYy1zZ2UgbWFzdGVyCg=='
