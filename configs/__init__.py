"""The recipes lmforge ships, installed as package data so `lmforge train NAME` finds them."""
