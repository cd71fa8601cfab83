"""Tests of devhost.http: the HTTP host over real sockets."""
