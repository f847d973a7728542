"""hpcsur.learn"""
