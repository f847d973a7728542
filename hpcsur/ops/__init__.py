"""hpcsur.ops"""
