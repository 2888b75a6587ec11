# context.sh of worker1.sge, written by elastic; the format is contextualization/README.md section 3.
# It holds password hashes and keys: do not log it.
HOSTNAME='worker1'
PROJECT='sge'
NODE_NAME='worker1'
NODE_GROUP='worker'
NODE_INDEX='1'
ETH0_MAC='02:00:0a:14:00:0a'
ETH0_IP='10.20.0.10'
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
START_SCRIPT_BASE64='ZWxhc3RpYy1zZ2UgZXhlYyAtLW1hc3RlciAxMC4yMC4wLjIK'
